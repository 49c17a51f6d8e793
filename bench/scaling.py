"""Step time and peak memory per rank, 1 vs 2 training processes, side by side in one run.

    python bench/scaling.py [--steps 4] [--models tiny,25m] [--nproc 1,2]

Each configuration is one real `scirl train` run (`trainer.nproc_per_node=N`: scirl starts torchrun itself; FSDP2 on
gloo for N > 1), the same global batch (8 prompts x 4 samples, 48 new tokens) and the same number of steps. Step
time is the median of `timing/step` in metrics.jsonl over the steps after the first (warm-up). Peak memory per rank
is each rank's high-water RSS (`VmHWM` in /proc, polled while the run lives; reward workers excluded), the largest
rank reported. Models: the bundled tiny Qwen3 (0.85M parameters) and a ~25M-parameter Qwen3-shaped model (random
init, 8 layers, hidden 512, the tiny tokenizer), written to a temp folder.

On a 2-core CPU the ranks share the cores, so 2 processes cannot be faster per step than 1 here; what the bench shows
is the cost of the data-parallel machinery (gathers for rollout weights, reduce-scatters, all-reduced normalisers)
and the memory split. On a GPU machine each rank has its own device; tokens/s and MFU belong there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_25m(folder: Path) -> tuple[Path, int]:
    """A ~25M-parameter Qwen3-shaped model with the tiny model's tokenizer, random init."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scirl.train.model_loading import resolve_model_path

    tiny = Path(resolve_model_path("builtin:tiny-qwen3"))
    cfg = AutoConfig.from_pretrained(tiny)
    cfg.update(dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=4, head_dim=64, layer_types=["full_attention"] * 8))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation_config")):
            shutil.copy(f, folder / f.name)
    return folder, sum(p.numel() for p in model.parameters())


def bench_models(names: str, tmp: Path) -> dict[str, str]:
    """{label: model path} for a comma list of `tiny` (the bundled model) and `25m` (built into `tmp`)."""
    models = {}
    for name in names.split(","):
        if name == "tiny":
            models["tiny (0.85M)"] = "builtin:tiny-qwen3"
        else:
            path, n = build_25m(tmp / "qwen3-25m")
            models[f"qwen3-shaped ({n / 1e6:.1f}M)"] = str(path)
    return models


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                out += kids
                todo += kids
        except OSError:
            continue
    return out


def _status(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    hwm = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmHWM:")), 0)
    return cmd, hwm


def run(model: str, nproc: int, steps: int, out: Path) -> dict:
    """One `scirl train` run; returns median step time and the largest rank's peak RSS (MiB)."""
    args = [sys.executable, "-m", "scirl", "train", f"model.path={model}", f"trainer.nproc_per_node={nproc}",
            f"trainer.output_dir={out}", f"trainer.run_name=n{nproc}", f"trainer.total_steps={steps}",
            "trainer.test_freq=0", "trainer.save_freq=0", "trainer.progress=false", "trainer.save_hf=false",
            "data.train_batch_size=8", "actor.ppo_mini_batch_size=8", "actor.ppo_micro_batch_size=16",
            "rollout.n=4", "rollout.max_new_tokens=48", "rollout.val_n=1", "data.val_size=8", "reward.workers=1",
            "actor.lr=1e-5"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *descendants(proc.pid)]:
            st = _status(pid)
            if st and " train " in st[0] + " " and "torch.distributed.run" not in st[0]:
                peaks[pid] = max(peaks.get(pid, 0), st[1])
        time.sleep(0.1)
    log = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}):\n{log[-3000:]}")
    rows = [json.loads(line) for line in (out / f"n{nproc}" / "metrics.jsonl").read_text().splitlines()]
    times = [r["timing/step"] for r in rows[1:]] or [rows[-1]["timing/step"]]
    # ranks: the training processes themselves, not their reward workers (a forked worker shares the rank's pages)
    ranks = sorted(peaks.values(), reverse=True)[:nproc]
    return {"step_s": statistics.median(times), "peak_rank_mib": max(ranks) / 1024, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--models", default="tiny,25m")
    ap.add_argument("--nproc", default="1,2")
    a = ap.parse_args()
    nprocs = [int(n) for n in a.nproc.split(",")]
    with tempfile.TemporaryDirectory(prefix="scirl-scaling-") as tmp:
        tmp = Path(tmp)
        models = bench_models(a.models, tmp)
        print(f"{'model':24} {'procs':>5} {'step s':>8} {'peak MiB/rank':>14} {'step vs 1 proc':>15}")
        for label, path in models.items():
            base = None
            for n in nprocs:
                r = run(path, n, a.steps, tmp / f"runs-{len(label)}-{n}")
                base = base or r
                print(f"{label:24} {n:>5} {r['step_s']:>8.2f} {r['peak_rank_mib']:>14.0f} "
                      f"{r['step_s'] / base['step_s']:>14.2f}x", flush=True)


if __name__ == "__main__":
    main()
