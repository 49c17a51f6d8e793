"""One step's metrics over all ranks: every rank computed them on its own share of the batch (equal numbers of
rows), rank 0 writes the combination. Counts are summed, maxima and timings take the maximum, a standard
deviation is pooled with its mean, a per-call ratio of the agent (`agent/tool_error_rate`, `agent/tool_latency/*`)
is weighted by each rank's calls (a rank without calls does not pull it towards 0), everything else is the mean
over ranks (each rank's mean over equally many rows). Metrics the Actor already reduced (actor/*) are equal on
every rank and pass through the mean unchanged."""

from __future__ import annotations

import math

from scirl import dist

SUMMED = ("reward/timeouts", "reward/errors")
STD_OF = {"reward/std": "reward/mean", "adv/std": "adv/mean"}
PER_CALL = ("agent/tool_error_rate", "agent/tool_latency/")  # weighted by agent/tool_calls_mean (calls per row);
# a latency by all the rank's calls, not that tool's: exact with one tool
CALLS = "agent/tool_calls_mean"


def combine(parts: list[dict[str, float]]) -> dict[str, float]:
    """The run's metrics from each rank's metrics (pure; equal weights per rank)."""
    keys = [k for k in parts[0]] + sorted({k for p in parts[1:] for k in p} - set(parts[0]))
    out: dict[str, float] = {}
    for key in keys:
        values = [float(p[key]) for p in parts if key in p]
        if key in SUMMED:
            out[key] = sum(values)
        elif key.endswith("_max") or key.startswith("timing/"):
            out[key] = max(values)
        elif key in STD_OF and all(STD_OF[key] in p for p in parts if key in p):
            means = [float(p[STD_OF[key]]) for p in parts if key in p]
            mean = sum(means) / len(means)  # pooled: E[x^2] - E[x]^2 over the ranks' equal shares
            second = sum(s * s + m * m for s, m in zip(values, means)) / len(values)
            out[key] = math.sqrt(max(0.0, second - mean * mean))
        elif key.startswith(PER_CALL) and all(CALLS in p for p in parts if key in p):
            weights = [float(p[CALLS]) for p in parts if key in p]
            total = sum(weights)
            out[key] = sum(v * w for v, w in zip(values, weights)) / total if total else sum(values) / len(values)
        else:
            out[key] = sum(values) / len(values)
    return out


def reduce_step_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` combined over all ranks (a collective: every rank calls it); unchanged in one process."""
    if dist.world_size() == 1:
        return metrics
    return combine(dist.all_gather_object(metrics))
