"""PNG plots of a run folder: `runs/<name>/plots/*.png` from `metrics.jsonl` and `eval/step_<N>.json`.

Each plot is drawn only when its metrics exist (a run without KL gets no kl.png). Metric names accept the
current scirl names and verl's namespaces (`critic/score/mean`, `response_length/mean`), whichever is logged."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never opens a window, works without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


# plot file stem -> (title, y label, [(label, [candidate metric keys, first present wins]), ...])
TRAIN_PLOTS = {
    "reward": ("Training reward and accuracy", "value", [
        ("reward mean", ["reward/mean", "critic/score/mean"]), ("accuracy", ["reward/acc", "critic/acc/mean"])]),
    "kl": ("KL", "KL", [
        ("ppo_kl (policy vs old)", ["actor/ppo_kl"]), ("kl loss (vs reference)", ["actor/kl_loss"]),
        ("kl penalty", ["actor/reward_kl_penalty", "critic/kl"])]),
    "entropy": ("Policy entropy", "nats / token", [("entropy", ["actor/entropy"])]),
    "response_length": ("Response length", "tokens", [
        ("mean", ["response/length_mean", "response_length/mean"]),
        ("max", ["response/length_max", "response_length/max"])]),
    "clip_fraction": ("Clip fraction", "fraction of tokens", [
        ("pg_clipfrac", ["actor/pg_clipfrac"]), ("pg_clipfrac_lower", ["actor/pg_clipfrac_lower"]),
        ("truncated responses", ["response/truncated_frac", "response_length/clip_ratio"])]),
    "grad_norm": ("Gradient norm (before clipping)", "L2 norm", [("grad_norm", ["actor/grad_norm"])]),
}
ORDER = ["reward", "val", *list(TRAIN_PLOTS)[1:], "timing"]  # the report shows the plots in this order
NOT_A_PHASE = {"timing/step", "timing/reward_overlapped"}  # totals / flags, not parts of the step


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of metrics.jsonl, one per step (a resumed run that logged a step twice keeps the last row)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a crashed run
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def read_evals(run_dir: Path) -> list[dict]:
    """The eval reports `eval/step_<N>.json`, sorted by step."""
    out = []
    for path in (Path(run_dir) / "eval").glob("step_*.json"):
        m = re.fullmatch(r"step_(\d+)\.json", path.name)
        if not m:
            continue
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        report.setdefault("step", int(m.group(1)))
        out.append(report)
    return sorted(out, key=lambda r: r["step"])


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for row in rows:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            xs.append(row["step"])
            ys.append(float(v))
    return xs, ys


def _first_present(rows: list[dict], keys: list[str]) -> str | None:
    return next((k for k in keys if any(k in r for r in rows)), None)


def _save(fig, path: Path) -> Path:
    """Write the figure as PNG in one rename (the report never embeds a half-written plot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def _figure(title: str, ylabel: str, xlabel: str = "step"):
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are integers
    return fig, ax


STYLES = ["-", "--", ":", "-."]  # equal curves (reward == accuracy, mean@k == pass@1) stay visible


def _line(ax, xs, ys, label):
    style = STYLES[len(ax.get_lines()) % len(STYLES)]
    ax.plot(xs, ys, style, marker="o" if len(xs) < 30 else None, markersize=3, label=label)


def _train_plot(rows, out: Path, stem: str, spec) -> Path | None:
    title, ylabel, curves = spec
    fig, ax = _figure(title, ylabel)
    drawn = 0
    for label, keys in curves:
        key = _first_present(rows, keys)
        if key:
            xs, ys = _series(rows, key)
            if xs:
                _line(ax, xs, ys, f"{label} ({key})")
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.legend(fontsize=8)
    return _save(fig, out / f"{stem}.png")


def _timing_plot(rows, out: Path) -> Path | None:
    phases = sorted({k for r in rows for k in r if k.startswith("timing/") and k not in NOT_A_PHASE})
    if not phases:
        return None
    fig, ax = _figure("Step time breakdown", "seconds")
    steps = [r["step"] for r in rows]
    bottom = [0.0] * len(rows)
    for key in phases:
        vals = [float(r.get(key) or 0.0) for r in rows]
        ax.bar(steps, vals, bottom=bottom, label=key.split("/", 1)[1], width=0.8)
        bottom = [b + v for b, v in zip(bottom, vals)]
    xs, ys = _series(rows, "timing/step")
    if xs:
        ax.plot(xs, ys, color="black", marker="o", markersize=3, label="step total")
    ax.legend(fontsize=8)
    return _save(fig, out / "timing.png")


def _val_plot(evals: list[dict], out: Path) -> Path | None:
    """mean@k and pass@k of every validation, overall and per source when there is more than one source."""
    if not evals:
        return None
    names = sorted({n for e in evals for n in e.get("metrics", {})
                    if n.split("@")[0] in ("mean", "pass") and n.split("@")[-1].isdigit()},
                   key=lambda n: (n.split("@")[0], int(n.split("@")[1])))
    if not names:
        return None
    sources = sorted({s for e in evals for s in e.get("by_source", {})})
    fig, ax = _figure("Validation", "score")
    steps = [e["step"] for e in evals]
    for name in names:
        _line(ax, steps, [e.get("metrics", {}).get(name, float("nan")) for e in evals], name)
        if len(sources) > 1:
            for src in sources:
                _line(ax, steps, [e.get("by_source", {}).get(src, {}).get(name, float("nan")) for e in evals],
                      f"{src} {name}")
    ax.legend(fontsize=7)
    return _save(fig, out / "val.png")


def make_plots(run_dir: Path) -> list[Path]:
    """Draw every plot the run's files allow into `<run_dir>/plots/` (each written atomically); the paths."""
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(run_dir)
    made = [_val_plot(read_evals(run_dir), out)]
    if rows:
        made += [_train_plot(rows, out, stem, spec) for stem, spec in TRAIN_PLOTS.items()]
        made.append(_timing_plot(rows, out))
    return [p for p in made if p is not None]
