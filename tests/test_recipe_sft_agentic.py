"""recipes/sft_agentic.yaml is the GRPO-TCR seed's stage 1 (multi-turn agentic SFT cold start): one check per card
line it follows, quoted from ../shared/reference/seeds/004_*.txt, the values scirl chooses, and `scirl config`
validating it (nothing is downloaded, no data is read)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import check_card_line
from scirl.config import load_config

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "sft_agentic.yaml"

CARD = [
    ("| Base model | Qwen/Qwen3-4B-Instruct-2507 | Apache-2.0 |",
     lambda c: c.model.path == "Qwen/Qwen3-4B-Instruct-2507"),
    ("| SFT dataset | y-ohtani/open_agentrl_like_sft | Apache-2.0 |",
     lambda c: "open_agentrl_like_sft" in c.sft.train and c.sft.train.endswith(".parquet")),
    ("Epochs: 10, Max length: 32768, Full fine-tuning (FSDP, bfloat16)",
     lambda c: c.sft.epochs == 10 and c.sft.max_steps == 0 and c.sft.max_length == 32768
     and c.model.lora.rank == 0 and c.model.dtype == "bfloat16" and c.trainer.nproc_per_node > 1),
    ("| Hardware | 4x RTX 4090 (24GB) |", lambda c: c.trainer.nproc_per_node == 4 and c.actor.fsdp.offload),
]


@pytest.mark.parametrize("line, check", CARD, ids=[line for line, _ in CARD])
def test_recipe_matches_the_card_line(line, check):
    check_card_line("004_*.txt", RECIPE, line, check)


def test_scirl_choices():
    c = load_config(RECIPE)
    s, a = c.sft, c.actor
    assert (s.batch_size, s.micro_batch_tokens, s.packing, s.truncation, s.rollout_eval) == (32, 32768, True, "drop",
                                                                                              False)
    assert (a.lr, a.betas, a.weight_decay, a.lr_scheduler, a.grad_clip) == (1e-5, [0.9, 0.95], 0.01, "cosine", 1.0)
    steps = 10 * -(-2000 // 32)  # ~2K conversations: 63 steps an epoch
    assert a.warmup_steps == steps // 10 == 63 and c.trainer.save_freq == 63
    assert a.gradient_checkpointing and c.data.enable_thinking is False and c.trainer.run_name == RECIPE.stem


def test_scirl_config_validates_the_recipe():
    out = subprocess.run([sys.executable, "-m", "scirl", "config", str(RECIPE)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "epochs: 10" in out.stdout and "max_length: 32768" in out.stdout
