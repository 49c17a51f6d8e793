"""The console view of an eval JSON: one table row overall and one per source, plus the report's note."""

from __future__ import annotations

from rich.table import Table

from scirl.log.console import console


def eval_table(report: dict) -> Table:
    """Columns mean@n, pass@1, pass@n, maj@n, best@n (those present), for all prompts and each source."""
    n = report["n"]
    keys = [k for k in (f"mean@{n}", "pass@1", f"pass@{n}", f"maj@{n}", f"best@{n}") if k in report["metrics"]]
    table = Table(title=f"{report['dataset']}  (n={n}, {report['num_prompts']} prompts)")
    table.add_column("source")
    table.add_column("prompts", justify="right")
    for k in dict.fromkeys(keys):
        table.add_column(k, justify="right")
    counts = report.get("prompts_by_source", {})
    rows = [("all", report["num_prompts"], report["metrics"])]
    if len(report.get("by_source", {})) > 1:
        rows += [(src, counts.get(src, ""), m) for src, m in report["by_source"].items()]
    for name, count, m in rows:
        table.add_row(name, str(count), *[f"{m[k]:.3f}" for k in dict.fromkeys(keys)])
    return table


def print_note(report: dict) -> None:
    if report.get("note"):
        console.print(f"note: {report['note']}", highlight=False)
