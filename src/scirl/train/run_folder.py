"""The run folder's rules: one run at a time (a lock), what a new or resumed run may do with what is already there,
and nothing an earlier run wrote is ever deleted or overwritten without an explicit flag (and then moved aside).

`trainer.resume`:
  auto (default)  continue from the newest usable checkpoint of `<output_dir>/<run_name>`; a finished run says so
                  and does nothing; a folder with run files but no usable checkpoint is moved into
                  `superseded/` and the run starts over; no folder: a new run.
  disable         a new run; refused when the folder already holds one (unless `trainer.overwrite=true`).
  PATH            continue from that checkpoint: of this run (later checkpoints, eval files and metric rows are
                  moved into `superseded/`), or of another run (a branch into a new run folder).
`trainer.overwrite=true` moves an existing run folder aside to `<run_name>.old-<time>` and starts a new run.

On a resume the checkpoint's own config is compared with the new one. In the same run folder only operational
keys (`OPERATIONAL`) may change; every other change is refused, naming the keys (a branch takes them). A branch
may change anything but the keys that define the model and the data order (`FIXED`). Every resume is appended to
`resumes.jsonl` with the keys it changed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from scirl.ckpt.checkpoint import (clean_temp_folders, latest_checkpoint, list_checkpoints, load_trainer_state,
                                   require_checkpoint, step_of)
from scirl.errors import ScirlError
from scirl.fsutil import atomic_write_text
from scirl.procs import close_in_children

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "eval", "checkpoints")
OPERATIONAL = ("trainer.total_steps", "trainer.test_freq", "trainer.save_freq", "trainer.keep_last",
               "trainer.save_on_signal", "trainer.progress", "trainer.num_threads", "trainer.device",
               "trainer.resume", "trainer.overwrite", "trainer.output_dir", "trainer.run_name",
               "reward.workers", "reward.timeout", "reward.overlap", "rollout.hf_max_batch_size", "data.data_dir",
               "trainer.nproc_per_node", "trainer.nnodes",
               "trainer.launcher", "trainer.save_hf", "trainer.best_metric", "trainer.best_mode", "trainer.logger",
               "trainer.mlflow_uri", "trainer.project_name", "ray.", "actor.fsdp.offload", "actor.fsdp.reshard_after_forward",
               "actor.gradient_checkpointing", "actor.logprobs_chunk_size", "rollout.engine", "rollout.val_engine",
               "rollout.gpu_memory_utilization", "rollout.enforce_eager", "rollout.free_cache_engine",
               "rollout.max_num_seqs", "rollout.max_model_len", "rollout.base_url", "rollout.api_key_env",
               "rollout.max_concurrency", "rollout.request_timeout", "rollout.max_retries", "rollout.sync_check_freq",
               "rollout.sync_check_tol", "sandbox.", "sft.epochs", "sft.max_steps", "sft.micro_batch_tokens",
               "sft.packing", "sft.val")
FIXED = ("model.", "data.train", "data.train_size", "data.seed", "data.shuffle", "data.dedup", "data.template",
         "data.system_prompt", "data.max_prompt_length", "data.truncation", "data.fields", "data.enable_thinking",
         "trainer.seed", "distill.teacher", "distill.teacher_path", "sft.train", "sft.batch_size", "sft.max_length",
         "sft.truncation", "sft.messages_key", "sft.tools_key")


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------------------------------------- the lock
class RunLock:
    """An exclusive lock on a run folder: `<output_dir>/.<run_name>.lock`, beside the folder so the folder itself
    can be moved aside while the lock is held. flock() ends with the holder's process, kill -9 included; the
    file's text (pid, host, start time) names the holder for the one-line refusal, and text left behind by a
    holder that did not exit cleanly is reported as a stale lock and taken over."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"
        self.file = None
        self.stale: str | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(self.path.read_text())
            f.close()
            raise ScirlError(f"run folder {self.run_dir} is in use by another run ({holder}); wait for it to end "
                             "or choose another trainer.run_name") from None
        f.seek(0)
        previous = f.read().strip()
        if previous:
            self.stale = _describe_holder(previous)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%F %T")}))
        f.flush()
        self.file = close_in_children(f)  # a forked child must not keep the lock alive
        return self

    def release(self) -> None:
        if self.file is None:
            return
        self.file.seek(0)
        self.file.truncate()  # an empty lock file means its last holder exited cleanly
        self.file.flush()
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        self.file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


# ---------------------------------------------------------------------------------------------- decisions
@dataclass
class RunStart:
    """What the trainer does with the run folder: start fresh, or resume from `ckpt` (whose state is loaded)."""

    ckpt: Path | None = None
    state: dict | None = None
    finished: bool = False  # the run already reached total_steps and wrote its summary: nothing to do
    changed: dict = field(default_factory=dict)  # key -> [checkpoint's value, new value]

    @property
    def step(self) -> int:
        return int(self.state["step"]) if self.state else 0


def has_run_files(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "fields" and k != "kwargs":
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _is(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in names)


def config_changes(old: dict, new: dict) -> dict:
    a, b = flat(old), flat(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _changes_line(changes: dict) -> str:
    return ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changes.items())


def prepare_run(cfg, config_dict: dict, warn: Callable[[str], None]) -> RunStart:
    """Apply the run folder rules (call with the lock held). Returns what to resume from, if anything."""
    t, run_dir = cfg.trainer, cfg.run_dir
    if t.overwrite and t.resume not in ("auto", "disable"):
        raise ScirlError("trainer.overwrite=true starts a new run; it cannot be combined with trainer.resume=PATH")
    if t.overwrite and has_run_files(run_dir):
        aside = _free_name(run_dir.with_name(f"{run_dir.name}.old-{_stamp()}"))
        run_dir.rename(aside)
        warn(f"trainer.overwrite: moved the earlier run to {aside}")
    run_dir.mkdir(parents=True, exist_ok=True)
    for p in clean_temp_folders(run_dir):
        warn(f"removed {p.name}, left by a checkpoint save that was killed")
    if t.resume == "disable" or t.overwrite:
        if has_run_files(run_dir):
            raise ScirlError(f"run folder {run_dir} already holds a run ({_describe_run(run_dir)}); continue it with "
                             "trainer.resume=auto, move it aside with trainer.overwrite=true, or choose another "
                             "trainer.run_name")
        return RunStart()
    if t.resume == "auto":
        ckpt = latest_checkpoint(run_dir, warn)
        if ckpt is None:
            if has_run_files(run_dir):
                moved = supersede(run_dir, -1, "restart")
                warn(f"no usable checkpoint in {run_dir}: starting over; the earlier files are in {moved}")
            return RunStart()
    else:
        ckpt = require_checkpoint(Path(t.resume))
    state = load_trainer_state(ckpt)
    step = int(state["step"])
    if step > t.total_steps:
        length = "sft.epochs or sft.max_steps" if getattr(cfg, "sft", None) and cfg.sft.train else "trainer.total_steps"
        raise ScirlError(f"checkpoint {ckpt} is at step {step}, past trainer.total_steps={t.total_steps}; raise "
                         f"{length} to train on, or start a new run (trainer.resume=disable with another "
                         "trainer.run_name)")
    same_run = ckpt.resolve().parent.parent == run_dir.resolve()
    if not same_run and has_run_files(run_dir):
        raise ScirlError(f"trainer.resume={ckpt} branches into {run_dir}, which already holds a run; choose a new "
                         "trainer.run_name for the branch")
    changes = config_changes(state.get("config") or config_dict, config_dict)
    refused = {k: v for k, v in changes.items() if not _is(k, OPERATIONAL) and (same_run or _is(k, FIXED))}
    if refused:
        hint = (f"to change them, branch: trainer.resume={ckpt} trainer.run_name=<new name>" if same_run and
                not any(_is(k, FIXED) for k in refused) else "they fix the model and the data order of the run")
        raise ScirlError(f"cannot resume {ckpt} with changed {_changes_line(refused)}: {hint}")
    summary = _read_json(run_dir / "summary.json")
    finished = (same_run and step == t.total_steps and summary is not None
                and summary.get("status") == "finished" and summary.get("steps") == step)
    if finished:
        return RunStart(ckpt, state, True, changes)
    if same_run:
        moved = supersede(run_dir, step, f"resume-step_{step}")
        if moved:
            warn(f"resuming at step {step}: what the run wrote after it is in {moved}")
    _record_resume(run_dir, ckpt, step, changes)
    return RunStart(ckpt, state, False, changes)


def _free_name(path: Path) -> Path:
    candidate, i = path, 1
    while candidate.exists():
        candidate, i = path.with_name(f"{path.name}-{i}"), i + 1
    return candidate


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _describe_run(run_dir: Path) -> str:
    ckpts = list_checkpoints(run_dir)
    summary = _read_json(run_dir / "summary.json") or {}
    parts = [f"latest checkpoint {ckpts[-1].name}" if ckpts else "no checkpoint"]
    if summary.get("status"):
        parts.append(str(summary["status"]))
    return ", ".join(parts)


def _record_resume(run_dir: Path, ckpt: Path, step: int, changes: dict) -> None:
    row = {"time": time.strftime("%F %T"), "from": str(ckpt), "step": step, "changed": changes}
    with open(run_dir / "resumes.jsonl", "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- moving aside
def supersede(run_dir: Path, step: int, tag: str) -> Path | None:
    """Move what the run wrote after `step` (checkpoints, eval files, metric rows, torn lines, the summary) into
    `superseded/<time>-<tag>/`; step -1 moves everything. Returns that folder, or None when nothing moved."""
    run_dir = Path(run_dir)
    dest = _free_name(run_dir / "superseded" / f"{_stamp()}-{tag}")
    moved = False

    def move(src: Path) -> None:
        nonlocal moved
        target = dest / src.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(target))
        moved = True

    for ckpt in list_checkpoints(run_dir):
        if step_of(ckpt) > step:
            move(ckpt)
    eval_dir = run_dir / "eval"
    for p in sorted(eval_dir.glob("step_*")) if eval_dir.is_dir() else []:
        n = p.name[len("step_"):].split("_")[0].split(".")[0]
        if n.isdigit() and int(n) > step or step < 0:
            move(p)
    for name in ("summary.json", "config.yaml") if step < 0 else ("summary.json",):
        if (run_dir / name).exists():
            move(run_dir / name)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        kept, dropped = split_metrics(metrics.read_text(), step)
        if dropped:
            (dest).mkdir(parents=True, exist_ok=True)
            (dest / "metrics.jsonl").write_text(dropped)
            moved = True
        if dropped or not kept:
            if kept:
                atomic_write_text(metrics, kept)
            else:
                metrics.unlink()
    return dest if moved else None


def split_metrics(text: str, step: int) -> tuple[str, str]:
    """(rows at or before `step`, everything else: later rows and lines that are not JSON, such as a torn last
    line from a crash mid-write)."""
    kept, dropped = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("step"), int) and 0 <= row["step"] <= step
        except ValueError:
            ok = False
        (kept if ok else dropped).append(line + "\n")
    return "".join(kept), "".join(dropped)


def decide_start(cfg, lock: RunLock | None, note: Callable[[str], None]) -> RunStart:
    """Rank 0 applies the run folder rules (`prepare_run`; `lock` is its RunLock); every rank gets its decision
    (or its one-line error). Used by `scirl train` and `scirl sft` alike."""
    from scirl import dist
    from scirl.config import to_dict

    decision = None
    if dist.is_main():
        try:
            if lock.stale:
                note(f"note: stale lock of a run that did not exit cleanly ({lock.stale}); taken over")
            start = prepare_run(cfg, to_dict(cfg), note)
            decision = {"ckpt": start.ckpt, "finished": start.finished}
        except ScirlError as e:
            dist.broadcast_object({"error": str(e)})
            raise
        dist.broadcast_object(decision)
        return start
    decision = dist.broadcast_object(decision)
    if "error" in decision:
        raise ScirlError(decision["error"])
    ckpt = decision["ckpt"]
    return RunStart(ckpt, load_trainer_state(ckpt) if ckpt else None, decision["finished"])
