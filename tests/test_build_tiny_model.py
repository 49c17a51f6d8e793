"""Tests for scripts/build_tiny_model.py (a reduced-budget build) and for the bundled tiny-qwen3 checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src" / "scirl" / "assets" / "tiny-qwen3"
MAX_BYTES = 20 * 1024 * 1024
MESSAGES = [{"role": "user", "content": "A cart of mass 3 kg accelerates at 4 m/s^2. Put the final answer in \\boxed{}."}]


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _load_and_generate(path: Path):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = torch.tensor([list(ids)])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    return tok, model


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    proc = subprocess.run(
        [sys.executable, "scripts/build_tiny_model.py", "--steps", "20", "--eval-prompts", "0", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_reduced_build_is_loadable(small_build: Path):
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "build_info.json"):
        assert (small_build / name).is_file(), name
    assert _folder_bytes(small_build) < MAX_BYTES
    tok, model = _load_and_generate(small_build)
    assert model.config.model_type == "qwen3"
    info = json.loads((small_build / "build_info.json").read_text())
    assert info["steps"] == 20 and "val_mean_at_8" not in info


def test_tokenizer_round_trips_solutions(small_build: Path):
    tok = AutoTokenizer.from_pretrained(small_build)
    for text in ("<think>\nF = m*a = 3*4 = 12\n</think>\n\n\\boxed{12}", "KE = m*v^2/2 = 4*9/2 = 18"):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert len(tok.encode("2024", add_special_tokens=False)) == 4  # single-digit tokens


def test_bundled_model():
    assert BUNDLED.is_dir(), "run scripts/build_tiny_model.py to create the bundled model"
    assert _folder_bytes(BUNDLED) < MAX_BYTES
    tok, model = _load_and_generate(BUNDLED)
    assert model.config.model_type == "qwen3"
    assert next(model.parameters()).dtype == torch.float32
    assert "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    no_think = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    info = json.loads((BUNDLED / "build_info.json").read_text())
    assert 0.15 <= info["val_mean_at_8"] <= 0.6
    assert info["val_greedy_acc"] > info["val_mean_at_8"]
