"""Tiny SFT fixtures written into a test's tmp folder: calculator conversations (half of them with a tool call and
its result) and the overrides of a small, fast `scirl sft` run on the bundled tiny model with Qwen3's template."""

from __future__ import annotations

import json
import random
from pathlib import Path

TEMPLATE = Path(__file__).parent / "qwen3_chat_template.jinja"


def conversation(a: int, b: int, tool: bool) -> list[dict]:
    msgs = [{"role": "user", "content": f"{a}*{b}?"}]
    if tool:
        msgs += [{"role": "assistant", "content": "", "tool_calls": [
                     {"type": "function", "function": {"name": "calculator", "arguments": {"expr": f"{a}*{b}"}}}]},
                 {"role": "tool", "name": "calculator", "content": str(a * b)}]
    return msgs + [{"role": "assistant", "content": f"{a * b}"}]


def write_conversations(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = [{"messages": conversation(rng.randint(10, 99), rng.randint(10, 99), i % 2 == 1)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_overrides(tmp_path: Path, **extra) -> list[str]:
    train = tmp_path / "train.jsonl"
    if not train.exists():
        write_conversations(train, 12)
        write_conversations(tmp_path / "val.jsonl", 4, seed=1)
    base = {"sft.train": str(train), "sft.val": str(tmp_path / "val.jsonl"), "sft.epochs": 2, "sft.batch_size": 4,
            "sft.max_length": 256, "sft.micro_batch_tokens": 256, "rollout.agent.chat_template": str(TEMPLATE),
            "actor.lr": 1e-3, "actor.warmup_steps": 0, "trainer.output_dir": str(tmp_path),
            "trainer.run_name": "s", "trainer.save_freq": 3, "trainer.progress": False, "trainer.logger": "[jsonl]"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def sft_args(tmp_path: Path, **extra) -> list[str]:
    """`scirl sft` arguments: a one-line recipe file and sft_overrides."""
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("model: {path: 'builtin:tiny-qwen3'}\n")
    return [str(recipe), *sft_overrides(tmp_path, **extra)]
