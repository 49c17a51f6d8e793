"""Console output with rich: a live progress bar (step, reward, accuracy, ETA) and the before -> after table."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=False)


class StepProgress:
    """Live bar on a terminal; one plain line per step otherwise (CI logs, pipes)."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.live = enabled and console.is_terminal
        self.total = total
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not self.live,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, step: int, metrics: dict) -> None:
        info = (f"reward {metrics.get('reward/mean', 0):.3f}  acc {metrics.get('reward/acc', 0):.3f}  "
                f"len {metrics.get('response/length_mean', 0):.1f}  {metrics.get('timing/step', 0):.1f}s/step")
        self.progress.update(self.task, completed=step, info=info)
        if not self.live:
            console.print(f"step {step}/{self.total}  {info}", highlight=False)

    def note(self, text: str) -> None:
        (self.progress.console if self.live else console).print(text, highlight=False)


def summary_table(summary: dict) -> Table:
    before, after = summary["before"]["metrics"], summary["after"]["metrics"]
    n = summary["after"]["n"]
    table = Table(title="held-out validation", show_lines=False)
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    for key in (f"mean@{n}", f"pass@{n}", f"maj@{n}", f"best@{n}", "pass@1"):
        if key in before and key in after:
            table.add_row(key, f"{before[key]:.3f}", f"{after[key]:.3f}", f"{after[key] - before[key]:+.3f}")
    return table


def summary_footer(summary: dict, run_dir: str) -> str:
    return (f"{summary['steps']} steps in {summary['wall_seconds']:.0f} s "
            f"({summary['skipped_updates']} updates skipped) · run folder: {run_dir}")
