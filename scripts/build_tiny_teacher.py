"""Build the OPD teacher of the tiny recipes: the bundled tiny model trained further by GRPO, saved as a
bundled model (`builtin:tiny-qwen3-teacher`). A stronger model of the same family and tokenizer, as on-policy
distillation needs (ALGORITHMS.md §9).

    python scripts/build_tiny_teacher.py            # ~2-3 min on a 2-core CPU; rewrites the asset folder

Deterministic for a given torch build: the run is seeded and runs on CPU.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from scirl.config import load_config  # noqa: E402
from scirl.train.loop import run_training  # noqa: E402

ASSET = REPO / "src" / "scirl" / "assets" / "tiny-qwen3-teacher"
STEPS = 90
OVERRIDES = [f"trainer.total_steps={STEPS}", "trainer.test_freq=0", "trainer.save_freq=0", "trainer.seed=11",
             "trainer.run_name=tiny_teacher", "trainer.progress=false", "actor.lr=1e-4", "data.seed=11",
             "algorithm.clip_ratio_high=0.28"]


def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, OVERRIDES + [f"trainer.output_dir={tmp}"])
        summary = run_training(cfg)
        ckpt = cfg.run_dir / "checkpoints" / f"step_{STEPS}" / "model"  # the checkpoint's HF folder
        if ASSET.exists():
            shutil.rmtree(ASSET)
        shutil.copytree(ckpt, ASSET)
    info = {
        "base": "builtin:tiny-qwen3", "method": "GRPO (recipes/tiny_grpo.yaml)", "overrides": OVERRIDES,
        "val_mean_at_8_before": round(summary["before"]["metrics"]["mean@8"], 4),
        "val_mean_at_8_after": round(summary["after"]["metrics"]["mean@8"], 4),
        "val_maj_at_8_after": round(summary["after"]["metrics"]["maj@8"], 4),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    (ASSET / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
