"""Shared fixtures: the bundled tiny model, small fast configs, the shared data folder (skip when absent)."""

import os
import signal
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(2)
# No progress lines in the suite's output (stderr line counts are asserted); tests/test_progress.py turns them on.
os.environ.setdefault("SCIRL_PROGRESS", "0")
# A shell starts a background job (`make test &`, a CI runner) with SIGINT ignored, and Python keeps it ignored;
# children inherit that, so the Ctrl-C tests would test nothing. Give this process (and, through exec's reset of
# handled signals, every child) Python's normal Ctrl-C behaviour.
signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (a test server's, a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_two_ranks(worker, tmp, out):
    """Run `worker(rank, 2, port, tmp, out)` on 2 spawned processes (a gloo group); what rank 0 saved to `out`."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(2, free_port(), tmp, out), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


def check_card_line(card_glob: str, recipe, line: str, check) -> None:
    """A recipe test's card line: the quoted text is on the seed card (when the reference folder sits beside the
    checkout) and `check` holds on the recipe's resolved config."""
    from scirl.config import load_config

    cards = sorted((REPO.parent / "shared" / "reference" / "seeds").glob(card_glob))
    if cards:
        assert line in cards[0].read_text(), f"not on the card: {line}"
    assert check(load_config(recipe)), line


def small_overrides(tmp_path, **extra) -> list[str]:
    base = {
        "trainer.output_dir": str(tmp_path), "trainer.run_name": "t", "trainer.total_steps": 2,
        "trainer.test_freq": 0, "trainer.save_freq": 0, "trainer.progress": False,
        "data.train_size": 64, "data.val_size": 8, "data.train_batch_size": 4,
        "actor.ppo_mini_batch_size": 4, "actor.ppo_micro_batch_size": 8,
        "rollout.n": 4, "rollout.val_n": 4, "rollout.max_new_tokens": 40, "reward.workers": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def full_and_resumed_runs(tmp_path, extra: dict, stop_after: int) -> tuple[Path, Path, dict]:
    """Train run "full" to `extra`'s total_steps; copy it as it stood after step `stop_after` (its checkpoints up
    to there, its first `stop_after` metric rows) to "part" and resume that. (full, part, the resumed summary)."""
    import shutil

    from scirl.config import load_config
    from scirl.train.loop import run_training

    run_training(load_config(None, small_overrides(tmp_path, **{**extra, "trainer.run_name": "full"})))
    full, part = tmp_path / "full", tmp_path / "part"
    shutil.copytree(full, part)
    for ckpt in (part / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > stop_after:
            shutil.rmtree(ckpt)
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:stop_after]) + "\n")
    summary = run_training(load_config(None, small_overrides(tmp_path, **{**extra, "trainer.run_name": "part",
                                                                          "trainer.resume": "auto"})))
    return full, part, summary


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer():
    from scirl.train.model_loading import load_model_and_tokenizer

    return load_model_and_tokenizer("builtin:tiny-qwen3")


def outcome_rewards(rewards, lengths, T=4):
    """Token-level rewards with each outcome on the last valid token (as a reward manager writes them), and the
    response mask: row i has `lengths[i]` valid tokens."""
    B = len(rewards)
    mask = torch.zeros(B, T)
    tlr = torch.zeros(B, T)
    for i, (r, n) in enumerate(zip(rewards, lengths)):
        mask[i, :n] = 1
        tlr[i, n - 1] = r
    return tlr, mask


def nested_frac(depth: int) -> str:
    """`\\frac{1}{\\frac{1}{...1}}`, `depth` levels deep (equals 1): a pathological reward input."""
    s = "1"
    for _ in range(depth):
        s = "\\frac{1}{" + s + "}"
    return s
