"""The best checkpoint of a run: `trainer.best_metric` (a key of the eval JSON's `metrics`, e.g. `mean@8`; an
optional `val/` prefix is accepted) and `trainer.best_mode` (max | min).

At every validation after step 0 the value is compared with the best so far; when it improves, the step's
checkpoint is made (a validation step that is not a save step is checkpointed for the purpose) and
`checkpoints/best/` becomes a copy of it, its files hard-linked where the file system allows (no extra disk), with
`best.json` = {step, metric, value, mode}. The copy is written beside it and renamed into place, so a crash leaves
the old best or the new one. Step 0 (the model before training) is never the best: there is no checkpoint of it.
Pruning (trainer.keep_last) keeps the best's step folder and the latest; `checkpoints/best/` is never pruned.
A resumed run reads best.json and goes on from there (a different metric or mode starts the tracking afresh).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from scirl.errors import ScirlError

BEST_DIR = "best"
BEST_FILE = "best.json"


def checkpoint_root(run_dir: Path) -> Path:  # as scirl.ckpt.checkpoint's, without importing torch (config checks)
    return Path(run_dir) / "checkpoints"


def metric_key(name: str) -> str:
    """The eval JSON key of a best_metric: `val/mean@16` -> `mean@16`."""
    return name[len("val/"):] if name.startswith("val/") else name


def validation_metrics(val_n: int) -> list[str]:
    """The `metrics` keys validation writes with rollout.val_n samples (scirl.eval.metrics: maj@n only when the
    reward reports a pred)."""
    from scirl.eval.metrics import pass_ks

    return [f"mean@{val_n}", f"std@{val_n}", *(f"pass@{k}" for k in pass_ks(val_n)), f"best@{val_n}",
            f"maj@{val_n}"]


def check_best_metric(metric: str, mode: str, val_n: int) -> None:
    """One-line errors at config load for a best_metric validation never writes, or a bad best_mode."""
    if mode not in ("max", "min"):
        raise ScirlError(f"trainer.best_mode: {mode!r} is not one of max, min")
    if not metric:
        return
    names = validation_metrics(val_n)
    if metric_key(metric) not in names:
        raise ScirlError(f"trainer.best_metric: validation (rollout.val_n={val_n}) never writes {metric!r}; "
                         f"it writes {', '.join(names)} (optionally prefixed val/)")


def best_dir(run_dir: Path) -> Path:
    return checkpoint_root(run_dir) / BEST_DIR


def read_best(run_dir: Path) -> dict | None:
    """The run's best.json ({step, metric, value, mode}), or None when there is none (or it is unreadable)."""
    try:
        return json.loads((best_dir(run_dir) / BEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking each file where possible (falls back to a copy across file systems)."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


class BestTracker:
    """Tracks the best validation value of a run and keeps `checkpoints/best/` in step with it."""

    def __init__(self, run_dir: Path, metric: str, mode: str = "max", old: dict | None = None):
        """`old`: the run's best.json (read_best; rank 0 reads it and broadcasts, so every rank agrees)."""
        self.run_dir, self.metric, self.mode = Path(run_dir), metric, mode
        self.key = metric_key(metric)
        same = old is not None and old.get("metric") == metric and old.get("mode", "max") == mode
        self.step = int(old["step"]) if same else None
        self.value = float(old["value"]) if same else None

    @property
    def on(self) -> bool:
        return bool(self.metric)

    def improves(self, report: dict | None) -> bool:
        """Whether a validation report beats the best so far (step 0, the untrained model, never does)."""
        if not self.on or report is None or not report.get("step"):
            return False
        value = report.get("metrics", {}).get(self.key)
        if value is None:
            return False
        if self.value is None:
            return True
        return value > self.value if self.mode == "max" else value < self.value

    def keep(self) -> set[Path]:
        """The step folder pruning must keep (the best's)."""
        return {checkpoint_root(self.run_dir) / f"step_{self.step}"} if self.step is not None else set()

    def record(self, step: int, report: dict, ckpt: Path | None) -> Path | None:
        """Take `step` as the best (every rank calls it); with `ckpt` (rank 0) make `checkpoints/best/` a
        hard-linked copy of it with best.json."""
        self.step, self.value = step, float(report["metrics"][self.key])
        if ckpt is None:
            return None
        root = checkpoint_root(self.run_dir)
        tmp, final = root / f".tmp_best_{os.getpid()}", best_dir(self.run_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        _link_tree(Path(ckpt), tmp)
        info = {"step": step, "metric": self.metric, "value": self.value, "mode": self.mode,
                "checkpoint": f"step_{step}"}
        (tmp / BEST_FILE).write_text(json.dumps(info, indent=1) + "\n")
        old = root / f".old_best_{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final
