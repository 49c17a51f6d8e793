"""recipes/math_grpo_dapo.yaml is the math GRPO seed (lllyx/Qwen3-4B-Base-GRPO) key by key, and `scirl config`
validates it."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import check_card_line
from scirl.config import load_config
from scirl.data.datasets import get_dataset_for, parse_sources

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "math_grpo_dapo.yaml"

# (line of the card, what it sets): each line is quoted verbatim from ../shared/reference/seeds/001_*.txt
CARD = [
    ("- **Base model**: Qwen3-4B-Base", lambda c: c.model.path == "Qwen/Qwen3-4B-Base"),
    ("- **Algorithm**: `grpo`", lambda c: c.algorithm.adv_estimator == "grpo" and c.actor.policy_loss == "vanilla"),
    ("- **Training dataset**: `DAPO-Math-17k-Processed`", lambda c: c.data.train == "dapo_math_17k"),
    ("- **Validation datasets**: `AIME25`, `AMC23`, `AIME24`",
     lambda c: [s.name for s in parse_sources(c.data.val, "data.val")] == ["aime25", "amc23", "aime24"]),
    ("- **Prompt length**: `1024`", lambda c: c.data.max_prompt_length == 1024),
    ("- **Response length**: `7168`", lambda c: c.rollout.max_new_tokens == 7168),
    ("- **Rollout temperature**: `1.0`", lambda c: c.rollout.temperature == 1.0),
    ("- **Responses per prompt**: 8", lambda c: c.rollout.n == 8),
    ("- **KL loss**: disabled", lambda c: not c.actor.use_kl_loss and not c.algorithm.use_kl_in_reward),
    ("- **Loss aggregation**: `token-mean`", lambda c: c.actor.loss_agg_mode == "token-mean"),
    ("- **Learning rate**: `1e-6`", lambda c: c.actor.lr == 1e-6),
    ("- **PPO mini-batch size**: `64`", lambda c: c.actor.ppo_mini_batch_size == 64),
    ("- **PPO micro-batch size per GPU**: `1`", lambda c: c.actor.ppo_micro_batch_size == 1),
    ("- **Number of GPUs**: `8`", lambda c: c.trainer.nproc_per_node * c.trainer.nnodes == 8),
    # one epoch over the 17,917 DAPO problems at 64 prompts per step, the last partial batch dropped (verl)
    ("- **Number of epochs**: `1`", lambda c: c.trainer.total_steps == 17917 // 64 == 279),
    ("- **Save frequency**: every `20` steps", lambda c: c.trainer.save_freq == 20),
    ("- **Test frequency**: every `20` steps", lambda c: c.trainer.test_freq == 20),
    ("- **Format reward**: disabled", lambda c: c.reward.name == "dataset" and not c.reward.overlong_buffer.enable),
]


@pytest.mark.parametrize("line, check", CARD, ids=[line for line, _ in CARD])
def test_recipe_matches_the_card_line(line, check):
    check_card_line("001_*.txt", RECIPE, line, check)


def test_recipe_keys_from_grpo_sh():
    """ALGORITHMS.md §9 "Card (b) GRPO recipe" (the same run's grpo.sh): "train_batch = mini_batch = 64 prompts
    (one update per step), n = 8, T = 1.0"; "lr 1e-6, ε = 0.2 (symmetric), `norm_adv_by_std_in_grpo=True`,
    token-mean, no KL, token TIS C = 2.0, fp32 params"; "validation n = 16, T = 1.0, top-p 0.95";
    "Qwen3-4B-Base, `enable_thinking=False`"."""
    c = load_config(RECIPE)
    assert (c.data.train_batch_size, c.actor.ppo_mini_batch_size, c.actor.ppo_epochs) == (64, 64, 1)
    assert (c.algorithm.clip_ratio_low, c.algorithm.clip_ratio_high, c.algorithm.norm_adv_by_std_in_grpo) == (
        0.2, 0.2, True)
    rc = c.algorithm.rollout_correction
    assert (rc.rollout_is, rc.rollout_is_threshold, rc.rollout_rs) == ("token", 2.0, None)
    assert (c.rollout.val_n, c.rollout.val_temperature, c.rollout.val_top_p) == (16, 1.0, 0.95)
    assert (c.model.dtype, c.data.enable_thinking, c.data.template) == ("float32", False, "cot_boxed")
    assert c.distill.teacher == "none" and c.actor.entropy_coeff == 0.0
    # thunlp/OPD's own copies of the validation sets; every source is registered with the math reward
    assert [(s.name, s.variant) for s in parse_sources(c.data.val, "data.val")] == [
        ("aime25", None), ("amc23", "opd83"), ("aime24", "opd")]
    for src in parse_sources(c.data.train, "data.train") + parse_sources(c.data.val, "data.val"):
        assert get_dataset_for("data", src.name).reward == "math"
    # verl semantics: batch and mini-batch are global prompt counts that the 8 ranks split evenly
    world = c.trainer.nproc_per_node * c.trainer.nnodes
    assert c.data.train_batch_size % world == 0 and c.actor.ppo_mini_batch_size % world == 0
    assert c.trainer.device == "cuda" and c.trainer.run_name == RECIPE.stem


def test_scirl_config_validates_the_recipe():
    out = subprocess.run([sys.executable, "-m", "scirl", "config", str(RECIPE)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "nproc_per_node: 8" in out.stdout and "train: dapo_math_17k" in out.stdout
