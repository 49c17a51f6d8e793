"""recipes/phybench_grpo_qlora.yaml is the PHYBench GRPO seed (Qwen3-1.7B, 4-bit QLoRA) key by key: one check per
line of the card's hyperparameter table and reward weights, each line quoted from ../shared/reference/seeds/002_*.txt
with the card's number in the check; `scirl config` validates the recipe (nothing is downloaded)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import check_card_line
from scirl.config import load_config
from scirl.data.datasets import parse_sources

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "phybench_grpo_qlora.yaml"


def _component(c, name):
    return next(p for p in c.reward.kwargs["components"] if p["name"] == name)


# (text on the card, what it sets)
CARD = [
    ("--model_name Qwen/Qwen3-1.7B", lambda c: c.model.path == "Qwen/Qwen3-1.7B"),
    ("--split_full PHYBench-fullques_v1.json",  # phybench/answered is that file
     lambda c: [(s.name, s.variant) for s in parse_sources(c.data.train, "data.train")] == [("phybench", "answered")]),
    ("| `max_prompt_len`  | 4096  |", lambda c: c.data.max_prompt_length == 4096),
    ("| `max_new_tokens`  | 1024  |", lambda c: c.rollout.max_new_tokens == 1024),
    ("| `num_generations` | 4     |", lambda c: c.rollout.n == 4),
    ("| `beta` (KL)       | 0.1   |", lambda c: c.actor.use_kl_loss and c.actor.kl_loss_coef == 0.1
     and c.actor.kl_loss_type in ("low_var_kl", "k3") and not c.algorithm.use_kl_in_reward),
    ("| `learning_rate`   | 5e\u20117  |", lambda c: c.actor.lr == 5e-7),
    ("| `warmup_ratio`    | 0.03  | linear LR schedule", lambda c: c.actor.lr_scheduler == "linear"
     and c.actor.warmup_steps == math.ceil(0.03 * c.trainer.total_steps) == 17),
    ("| `r` (LoRA rank)   | 64    | target modules `q_proj`,`v_proj` |",
     lambda c: c.model.lora.rank == 64 and c.model.lora.target_modules == ["q_proj", "v_proj"]),
    ("**LoRA\u201164 / 4\u2011bit QLoRA**", lambda c: c.model.quantization.load_in_4bit
     and c.model.quantization.bnb_4bit_quant_type == "nf4"),
    ("w_format  = 0.2   # presence of \\boxed{", lambda c: _component(c, "format_boxed")["weight"] == 0.2),
    ("w_trace   = 0.3   # \u22656 newline", lambda c: _component(c, "trace_steps")["weight"] == 0.3
     and _component(c, "trace_steps")["info"]["min_steps"] == 6),
    ("w_correct = 0.5   # EED", lambda c: _component(c, "eed")["weight"] == 0.5),
    ("550 steps, 2\u00d72 batch", lambda c: c.trainer.total_steps == 550 and c.rollout.n * c.data.train_batch_size
     == 2 * 2 and c.actor.ppo_micro_batch_size == 2),
]


@pytest.mark.parametrize("line, check", CARD, ids=[line for line, _ in CARD])
def test_recipe_matches_the_card_line(line, check):
    check_card_line("002_*.txt", RECIPE, line, check)


def test_the_reward_is_the_composite_of_exactly_the_three_parts():
    from scirl.rewards.composite import _parts

    c = load_config(RECIPE)
    assert c.reward.name == "composite"
    parts = [(name, w) for _, name, w, _ in _parts(c.reward.kwargs)]  # validated as the reward pool does
    assert parts == [("format_boxed", 0.2), ("trace_steps", 0.3), ("eed", 0.5)]
    assert sum(w for _, w in parts) == pytest.approx(1.0)
    assert c.data.template == "cot_boxed" and c.model.dtype == "bfloat16" and c.trainer.device == "cuda"
    assert c.trainer.run_name == RECIPE.stem and c.trainer.nproc_per_node == 1


def test_scirl_config_validates_the_recipe():
    out = subprocess.run([sys.executable, "-m", "scirl", "config", str(RECIPE)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "load_in_4bit: true" in out.stdout and "path: Qwen/Qwen3-1.7B" in out.stdout
