"""Console output with rich: the training progress (step, reward, accuracy, ETA) and the before -> after table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(stderr=False)


class StepProgress:
    """The training bar (scirl.progress on stderr: a live bar on a terminal, periodic lines with ETA otherwise) and
    one plain line per step on stdout unless the live bar shares the terminal with it (CI logs, pipes)."""

    def __init__(self, total: int, start: int, enabled: bool = True, lines: bool = True):
        from scirl.progress import progress

        self.total, self.lines = total, lines
        self._cm = progress(total, "train", "steps", initial=start, enabled=enabled)

    def __enter__(self):
        self.bar = self._cm.__enter__()
        self.live = self.bar.live and console.is_terminal
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)

    def update(self, step: int, metrics: dict) -> None:
        info = (f"reward {metrics.get('reward/mean', 0):.3f}  acc {metrics.get('reward/acc', 0):.3f}  "
                f"len {metrics.get('response/length_mean', 0):.1f}  {metrics.get('timing/step', 0):.1f}s/step")
        self.bar.update(step, info=info)
        if self.lines and not self.live:
            console.print(f"step {step}/{self.total}  {info}", highlight=False)

    def note(self, text: str) -> None:
        (self.bar.console if self.live else console).print(text, highlight=False)


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
    rates = [((summary[k].get("agent") or {}).get("overall") or {}).get("tool_call_rate") for k in ("before", "after")]
    if None not in rates:  # agent runs: the fraction of samples that called a tool
        table.add_row("tool-call rate", f"{rates[0]:.3f}", f"{rates[1]:.3f}", f"{rates[1] - rates[0]:+.3f}")
    return table


def summary_footer(summary: dict, run_dir: str) -> str:
    return (f"{summary['steps']} steps in {summary['wall_seconds']:.0f} s "
            f"({summary['skipped_updates']} updates skipped) · run folder: {run_dir}")
