"""`runs/<name>/report.html`: one self-contained page (plots as base64 data URIs, inline CSS, no external URL)
with the resolved config, the eval tables before / final, sample responses with their scores and the best and
worst groups of the last validation. It opens offline; every text is escaped with html.escape."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path


USAGE = """scirl report RUN_DIR

Rebuild a run folder's plots (RUN_DIR/plots/*.png) and its self-contained HTML report (RUN_DIR/report.html);
training refreshes both at each validation."""

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}.plots img{width:48%;min-width:380px;margin:.3%}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap;font-size:.85em}
.ok{color:#0a0}.bad{color:#b00}.group{border:1px solid #ddd;padding:.4em .8em;margin:.6em 0}
.muted{color:#777}"""
SAMPLES_SHOWN = 6  # sample responses listed from the final validation
GROUPS_SHOWN = 2  # best and worst prompt groups each


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _e(v)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_samples(run_dir: Path, step: int) -> list[dict]:
    path = Path(run_dir) / "eval" / f"step_{step}_samples.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _eval_table(before: dict | None, final: dict | None, source: str | None = None) -> str:
    def pick(report):
        if report is None:
            return {}
        return report.get("by_source", {}).get(source, {}) if source else report.get("metrics", {})

    b, f = pick(before), pick(final)
    names = list(dict.fromkeys([*b, *f]))
    head = (f"<tr><th>metric</th><th>before (step {_e(before['step']) if before else '–'})</th>"
            f"<th>final (step {_e(final['step']) if final else '–'})</th><th>change</th></tr>")
    rows = []
    for n in names:
        bv, fv = b.get(n), f.get(n)
        change = f"{fv - bv:+.4g}" if isinstance(bv, (int, float)) and isinstance(fv, (int, float)) else ""
        rows.append(f"<tr><td>{_e(n)}</td><td>{_num(bv) if bv is not None else ''}</td>"
                    f"<td>{_num(fv) if fv is not None else ''}</td><td>{_e(change)}</td></tr>")
    cls = f"eval-table source-{_e(source)}" if source else "eval-table overall"
    return f'<table class="{cls}">{head}{"".join(rows)}</table>'


def _history_table(evals: list[dict]) -> str:
    names = list(dict.fromkeys(n for e in evals for n in e.get("metrics", {})))
    head = "<tr><th>step</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    body = "".join("<tr><td>" + _e(e["step"]) + "</td>" + "".join(
        f"<td>{_num(e.get('metrics', {}).get(n, ''))}</td>" for n in names) + "</tr>" for e in evals)
    return f'<table class="eval-history">{head}{body}</table>'


def _response(row: dict) -> str:
    ok = row.get("correct")
    mark = '<span class="ok">correct</span>' if ok else '<span class="bad">wrong</span>' if ok is False else ""
    return (f'<div class="sample"><p>score <b class="score">{_num(row.get("score"))}</b> {mark} · pred '
            f'<code>{_e(row.get("pred", ""))}</code> · answer <code>{_e(row.get("answer", ""))}</code></p>'
            f'<pre>{_e(row.get("response", ""))}</pre></div>')


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row.get("prompt_id")), []).append(row)
    return groups


def _mean_score(rows: list[dict]) -> float:
    scores = [float(r["score"]) for r in rows if isinstance(r.get("score"), (int, float))]
    return sum(scores) / len(scores) if scores else float("nan")


def _group_html(pid: str, rows: list[dict], kind: str) -> str:
    question = next((r["question"] for r in rows if r.get("question")), "")
    return (f'<div class="group {kind}"><h3>{_e(pid)} — mean score {_mean_score(rows):.3g}</h3>'
            f'<p><b>question</b>: {_e(question)}</p>' + "".join(_response(r) for r in rows) + "</div>")


def _samples_section(rows: list[dict], step: int | None) -> str:
    if not rows:
        return "<p class=muted>No sample responses recorded.</p>"
    groups = _groups(rows)
    ranked = sorted(groups.items(), key=lambda kv: _mean_score(kv[1]))
    k = min(GROUPS_SHOWN, len(ranked) // 2) or 1
    shown = [g[0] for g in groups.values()][:SAMPLES_SHOWN]  # one response per prompt
    return (f"<p>From the validation at step {_e(step)}: {len(rows)} responses to {len(groups)} prompts.</p>"
            "<h3>Sample responses</h3>" + "".join(
                f'<p class="muted">{_e(r.get("prompt_id", ""))} · sample {_e(r.get("sample", ""))}</p>'
                + (f'<p><b>question</b>: {_e(r["question"])}</p>' if r.get("question") else "")
                + _response(r) for r in shown)
            + "<h2>Best groups</h2>" + "".join(_group_html(p, g, "best") for p, g in reversed(ranked[-k:]))
            + "<h2>Worst groups</h2>" + "".join(_group_html(p, g, "worst") for p, g in ranked[:k]))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(path.stem)}" title="{_e(path.stem)}" src="data:image/png;base64,{data}">'


# Only with check=True (tests): after load, write into the DOM whether every image decoded and any script error.
CHECK_SCRIPT = """<script>
var scirlErrors=[];window.addEventListener('error',function(e){scirlErrors.push(String(e.message))});
window.addEventListener('load',function(){var imgs=Array.prototype.slice.call(document.images);
var broken=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).map(function(i){return i.alt});
var d=document.createElement('div');d.id='scirl-check';d.setAttribute('data-images',imgs.length);
d.setAttribute('data-broken',broken.join(','));d.setAttribute('data-errors',scirlErrors.join('|'));
d.setAttribute('data-widths',imgs.map(function(i){return i.naturalWidth}).join(','));
document.body.appendChild(d);});
</script>"""


def build_report(run_dir: Path, out: Path | None = None, check: bool = False, plots: bool = True) -> Path:
    """Write `<run_dir>/report.html` (or `out`), drawing the plots first unless `plots=False`; its path."""
    from scirl.publish.plots import ORDER, make_plots, read_evals  # matplotlib loads only when a report is built

    run_dir = Path(run_dir)
    if plots:
        make_plots(run_dir)
    evals = read_evals(run_dir)
    summary = _read_json(run_dir / "summary.json") or {}
    before = next((e for e in evals if e["step"] == 0), summary.get("before"))
    final = evals[-1] if evals else summary.get("after")
    if final is before and len(evals) < 2:
        final = summary.get("after") or final
    config = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").exists() else ""
    sources = sorted({s for e in (before, final) if e for s in e.get("by_source", {})})
    status = summary.get("status", "running")
    parts = [f"<h1>scirl run report: {_e(run_dir.name)}</h1>",
             f'<p>status <b id="status">{_e(status)}</b> · steps {_e(summary.get("steps", final and final["step"]))}'
             + (f' · wall time {summary["wall_seconds"]:.0f} s' if isinstance(summary.get("wall_seconds"), float)
                else "") + f' · dataset {_e((final or {}).get("dataset", ""))}</p>',
             "<h2>Held-out validation</h2>", _eval_table(before, final)]
    if len(sources) > 1:
        for src in sources:
            parts += [f"<h3>source {_e(src)}</h3>", _eval_table(before, final, src)]
    if len(evals) > 1:
        parts += ["<h3>Every validation</h3>", _history_table(evals)]
    rank = {stem: i for i, stem in enumerate(ORDER)}
    pngs = sorted((run_dir / "plots").glob("*.png"), key=lambda p: (rank.get(p.stem, len(rank)), p.name))
    parts += ['<h2>Curves</h2><div class="plots">', *(_img(p) for p in pngs), "</div>"]
    last_step = final["step"] if final else None
    parts += ["<h2>Validation samples</h2>", _samples_section(read_samples(run_dir, last_step), last_step)
              if last_step is not None else "<p class=muted>No validation yet.</p>"]
    parts += ["<h2>Resolved config</h2>", f'<pre id="config">{_e(config)}</pre>']
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(run_dir.name)} · scirl report</title><style>{CSS}</style>"
            + (CHECK_SCRIPT if check else "") + "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    out = Path(out) if out is not None else run_dir / "report.html"
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


class ReportRefresher:
    """The training loop's hook (rank 0): rebuild plots + report after each validation. A failure is logged once
    and never stops the run; later refreshes keep trying quietly."""

    def __init__(self, run_dir: Path, note=print):
        self.run_dir, self.note, self.warned = Path(run_dir), note, False

    def __call__(self) -> None:
        try:
            build_report(self.run_dir)
        except Exception as e:  # noqa: BLE001 - publishing must never stop training
            if not self.warned:
                self.warned = True
                self.note(f"report/plots not refreshed ({type(e).__name__}: {e}); training goes on")


def report_main(args: list[str]) -> int:
    from scirl.errors import ScirlError

    if len(args) != 1 or args[0].startswith("-"):
        raise ScirlError(f"usage: {USAGE.splitlines()[0]}")
    run_dir = Path(args[0])
    if not run_dir.is_dir():
        raise ScirlError(f"run folder {run_dir} does not exist")
    if not (run_dir / "metrics.jsonl").exists() and not (run_dir / "eval").is_dir():
        raise ScirlError(f"{run_dir} is not a run folder (no metrics.jsonl, no eval/)")
    from scirl.progress import progress
    from scirl.publish.plots import make_plots

    with progress(2, "report", "stages", info="plots") as bar:
        make_plots(run_dir)
        bar.advance(info="report.html")
        out = build_report(run_dir, plots=False)
        bar.advance(info=str(out))
    print(f"wrote {out} and {len(list((run_dir / 'plots').glob('*.png')))} plots in {run_dir / 'plots'}")
    return 0
