"""recipes/grpo_tcr.yaml is the GRPO-TCR seed (y-ohtani/GRPO-TCR-Qwen3-4B-quarter, stage 2) key by key: one check
per line of the card's configuration table, each line quoted from ../shared/reference/seeds/004_*.txt with the
card's number in the check; `scirl config` validates the recipe (nothing is downloaded, no data is read)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import check_card_line
from scirl.config import load_config
from scirl.data.datasets import parse_sources

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "grpo_tcr.yaml"

# (line of the card, what it sets)
CARD = [
    ("| Base model | Qwen/Qwen3-4B-Instruct-2507 | Apache-2.0 |",
     lambda c: c.model.path == "Qwen/Qwen3-4B-Instruct-2507"),
    ("| Algorithm | GRPO (Group Relative Policy Optimization) |",
     lambda c: c.algorithm.adv_estimator == "grpo" and c.actor.policy_loss == "vanilla"),
    ("| Max prompt length | 2,560 |", lambda c: c.data.max_prompt_length == 2560),
    ("| Max response length | 10,480 |", lambda c: c.rollout.agent.max_response_len == 10480
     and c.rollout.max_new_tokens == 10480),
    ("| Max turns | 16 |", lambda c: c.rollout.agent.enable and c.rollout.agent.max_turns == 16),
    ("selectively calling a code_interpreter tool", lambda c: c.rollout.agent.tools == ["code_interpreter"]),
    ("| Learning rate | 1e-6 |", lambda c: c.actor.lr == 1e-6),
    ("| Train batch size | 4 |", lambda c: c.data.train_batch_size == 4),
    ("| Responses per prompt (n) | 8 |", lambda c: c.rollout.n == 8),
    ("| PPO mini batch size | 1 |", lambda c: c.actor.ppo_mini_batch_size == 1),
    ("| Epochs | 3 |", lambda c: c.trainer.total_steps == 3 * (490 // 4)),
    ("| Total steps | 366 |", lambda c: c.trainer.total_steps == 366),
    ("| Train samples | 490 (1/4 of full dataset) |", lambda c: c.data.train_size == 490),
    ("| Test samples | 10 |", lambda c: c.data.val_size == 10),
    ("| Loss aggregation | token-mean |", lambda c: c.actor.loss_agg_mode == "token-mean"),
    ("| Clip ratio | low=0.2, high=0.28 (asymmetric) |",
     lambda c: c.algorithm.clip_ratio_low == 0.2 and c.algorithm.clip_ratio_high == 0.28),
    ("| KL divergence | Disabled (kl_coef=0.0) |", lambda c: not c.actor.use_kl_loss
     and not c.algorithm.use_kl_in_reward and c.algorithm.kl_ctrl.kl_coef == 0.0),
    ("| Overlong penalty | buffer=3,000, factor=1.0 |", lambda c: c.reward.overlong_buffer.enable
     and c.reward.overlong_buffer.len == 3000 and c.reward.overlong_buffer.penalty_factor == 1.0),
    ("| TCR (Tool Call Reward) |", lambda c: c.reward.name == "tcr"),
    ("| Rollout engine | vLLM (sync mode, TP=4) |", lambda c: c.rollout.engine == "vllm"),
    ("| Param/optimizer offload | True (CPU) |", lambda c: c.actor.fsdp.offload is True),
    ("| GPU memory utilization | 0.3 |", lambda c: c.rollout.gpu_memory_utilization == 0.3),
    ("- Name: y-ohtani/open_agentrl_grpo_2k", lambda c: "open_agentrl_grpo_2k" in c.data.train),
]


@pytest.mark.parametrize("line, check", CARD, ids=[line for line, _ in CARD])
def test_recipe_matches_the_card_line(line, check):
    check_card_line("004_*.txt", RECIPE, line, check)


def test_overlong_and_tcr_numbers_under_the_agent():
    """The DAPO penalty measures the whole conversation against rollout.agent.max_response_len: soft limit
    10,480 - 3,000 = 7,480 tokens, -1.0 at 10,480; TCR: a wrong answer after 3 tool rounds scores -0.7."""
    from scirl.rewards.tcr import tcr_score

    c = load_config(RECIPE)
    assert c.rollout.agent.max_response_len - c.reward.overlong_buffer.len == 7480
    assert (tcr_score(-1.0, 2), tcr_score(-1.0, 8), tcr_score(-1.0, 20), tcr_score(1.0, 8)) == (-1.0, -0.7, -0.6, 1.0)
    # the sandbox stops a program before the tool call's own timeout fires
    assert c.rollout.agent.tool_timeout == 15.0 and c.sandbox.timeout == 10.0
    # local verl-style parquet files (the card's dataset is not registered in scirl)
    assert [s.path.name for s in parse_sources(c.data.train, "data.train")] == ["train.parquet"]
    assert [s.path.name for s in parse_sources(c.data.val, "data.val")] == ["test.parquet"]
    assert c.model.dtype == "bfloat16" and c.trainer.device == "cuda" and c.trainer.run_name == RECIPE.stem
    assert c.data.train_batch_size % c.actor.ppo_mini_batch_size == 0 and c.trainer.nproc_per_node == 1


def test_scirl_config_validates_the_recipe():
    out = subprocess.run([sys.executable, "-m", "scirl", "config", str(RECIPE)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "max_turns: 16" in out.stdout and "path: Qwen/Qwen3-4B-Instruct-2507" in out.stdout
