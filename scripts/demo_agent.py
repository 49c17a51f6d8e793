"""`make demo-agent`: the tiny tool-use demo, three stages glued, ending with a base -> SFT -> GRPO table.

Usage:  python scripts/demo_agent.py [all | data | table]   (default all)

  data   write the SFT cold-start conversations (scirl.data.synthetic_tools.write_sft_jsonl) to
         runs/demo-agent-data/sft.jsonl (the path recipes/tiny_sft_tools.yaml reads; never committed)
  all    data, then `scirl sft recipes/tiny_sft_tools.yaml trainer.run_name=demo-agent-sft` (base -> SFT),
         then `scirl train recipes/tiny_grpo_tools.yaml model.path=<SFT run's last checkpoint>/model
         trainer.run_name=demo-agent` (SFT -> GRPO-TCR), then `table`
  table  print the base / after SFT / after GRPO table (held-out mean@8 and maj@8 of the tcr score, pass@1 =
         accuracy, pass@8, tool-call rate) and add it
         to runs/demo-agent/summary.json as "stages" (each stage's eval metrics + tool_call_rate)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scirl.data.synthetic_tools import write_sft_jsonl  # noqa: E402

RUNS = REPO / "runs"
DATA = RUNS / "demo-agent-data" / "sft.jsonl"
SFT_RUN, GRPO_RUN = RUNS / "demo-agent-sft", RUNS / "demo-agent"
SFT_ROWS, TOOL_FRACTION = 8000, 0.5
KEYS = ("mean@8", "pass@1", "maj@8", "pass@8")  # mean@8 / maj@8: the tcr score (-1..1); pass@1: accuracy


def scirl(*args: str) -> None:
    cmd = [sys.executable, "-m", "scirl", *args]
    print("$ scirl " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def last_checkpoint(run: Path) -> Path:
    steps = sorted((run / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    if not steps:
        raise SystemExit(f"demo-agent: no checkpoint in {run / 'checkpoints'}")
    return steps[-1]


def stage(report: dict | None) -> dict | None:
    """The table's numbers of one eval report: KEYS + tool_call_rate (None when the report is missing)."""
    if not report:
        return None
    out = {k: report["metrics"][k] for k in KEYS if k in report.get("metrics", {})}
    out["tool_call_rate"] = ((report.get("agent") or {}).get("overall") or {}).get("tool_call_rate")
    return out


def table() -> dict:
    sft = json.loads((SFT_RUN / "summary.json").read_text())
    grpo_path = GRPO_RUN / "summary.json"
    grpo = json.loads(grpo_path.read_text())
    stages = {"base": stage(sft.get("before")), "sft": stage(sft.get("after") or grpo.get("before")),
              "grpo": stage(grpo.get("after"))}
    grpo["stages"] = stages
    grpo_path.write_text(json.dumps(grpo, indent=2) + "\n")
    cols = [k for k in ("base", "sft", "grpo") if stages[k]]
    names = {"base": "base", "sft": "after SFT", "grpo": "after GRPO"}
    print("\ntiny tool-use demo: held-out tiny_tools, 64 prompts x 8 samples, calculator "
          "(mean@8, maj@8: tcr score in [-1, 1]; pass@1: accuracy)")
    print(f"{'metric':<16}" + "".join(f"{names[c]:>12}" for c in cols))
    for key in (*KEYS, "tool_call_rate"):
        vals = [stages[c].get(key) for c in cols]
        print(f"{key:<16}" + "".join(f"{v:>12.3f}" if v is not None else f"{'-':>12}" for v in vals))
    print(f"summary: {grpo_path} (\"stages\"); SFT run: {SFT_RUN}")
    return stages


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "all"
    if what not in ("all", "data", "table"):
        raise SystemExit(f"usage: {Path(__file__).name} [all | data | table] (got {what!r})")
    t0 = time.time()
    if what in ("all", "data"):
        write_sft_jsonl(DATA, SFT_ROWS, seed=0, tool_fraction=TOOL_FRACTION)
        print(f"wrote {DATA.relative_to(REPO)}: {SFT_ROWS} conversations, ~{TOOL_FRACTION:.0%} with a tool call")
    if what == "all":
        scirl("sft", "recipes/tiny_sft_tools.yaml", "trainer.run_name=demo-agent-sft", "trainer.overwrite=true")
        model = last_checkpoint(SFT_RUN) / "model"
        scirl("train", "recipes/tiny_grpo_tools.yaml", f"model.path={model.relative_to(REPO)}",
              "trainer.run_name=demo-agent", "trainer.overwrite=true")
    if what in ("all", "table"):
        table()
    if what == "all":
        print(f"demo-agent: {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
