"""Validation metrics from per-sample scores: unbiased pass@k, verl's bootstrap best@N / maj@N, and the eval JSON.

best@N and maj@N replicate verl `metric_utils.process_validation_metrics` (ALGORITHMS.md §11): a bootstrap
of `n_bootstrap` draws of N indices with replacement, the generator reseeded with `seed` on every call
(a local `np.random.RandomState(seed)` gives exactly the stream of `np.random.seed(seed)`; drawing the whole
(n_bootstrap, N) index matrix at once gives the same indices as verl's draw-by-draw loop). Note that
best@n is NOT the unbiased pass@n: for 1 correct of 16, best@16 = 0.656 (seed 42) while pass@16 = 1.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from scirl.errors import ScirlError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) for one problem with c correct of n samples: 1 - C(n-c, k) / C(n, k).

    Uses the stable product form 1 - prod_{i=n-c+1}^{n} (1 - k/i).
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ScirlError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def bootstrap_ns(n: int) -> list[int]:
    """verl's bootstrap sizes: [2, 4, 8, ... (< n), n]; [1] when n == 1 (verl skips that case)."""
    if n <= 1:
        return [n] if n == 1 else []
    ns, k = [], 2
    while k < n:
        ns.append(k)
        k *= 2
    return ns + [n]


def _majority_values(values: np.ndarray, codes: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per draw (row of `idx`): the value of the first drawn item whose pred is the draw's most common pred,
    ties going to the pred that appears first in the draw (verl `calc_maj_val`)."""
    draws, size = idx.shape
    drawn = codes[idx]  # [draws, size] pred codes
    counts = np.zeros((draws, int(codes.max()) + 1), dtype=np.int64)
    rows = np.repeat(np.arange(draws), size)
    np.add.at(counts, (rows, drawn.ravel()), 1)
    count_at = counts[np.arange(draws)[:, None], drawn]  # how often each drawn item's pred occurs in its draw
    first_modal = np.argmax(count_at == count_at.max(axis=1, keepdims=True), axis=1)
    return values[idx[np.arange(draws), first_modal]]


def bootstrap_best_maj(
    values: Sequence[float],
    preds: Sequence[str | None] | None,
    ns: Sequence[int],
    n_bootstrap: int = 1000,
    seed: int = 42,
) -> dict[str, float]:
    """verl's bootstrap metrics for one prompt's samples.

    For each N in `ns`: `best@N/mean`, `best@N/std`, `worst@N/mean`, `worst@N/std`, and, when `preds` is
    given, `maj@N/mean`, `maj@N/std` (std over draws, ddof 0). Every N (and best vs maj) uses a fresh
    generator seeded with `seed`, as verl reseeds on every `bootstrap_metric` call. A pred of None is a vote
    like any other (verl keys its vote dict by the raw pred).
    """
    vals = np.asarray(values, dtype=np.float64)
    n = vals.shape[0]
    if n == 0:
        raise ScirlError("bootstrap_best_maj needs at least one value")
    codes = None
    if preds is not None:
        if len(preds) != n:
            raise ScirlError(f"bootstrap_best_maj: {len(preds)} preds for {n} values")
        table: dict[Any, int] = {}
        codes = np.array([table.setdefault(p, len(table)) for p in preds], dtype=np.int64)
    out: dict[str, float] = {}
    for size in ns:
        if size < 1:
            raise ScirlError(f"bootstrap subset size must be >= 1, got {size}")
        idx = np.random.RandomState(seed).choice(n, size=(n_bootstrap, size), replace=True)
        drawn = vals[idx]
        best, worst = drawn.max(axis=1), drawn.min(axis=1)
        out[f"best@{size}/mean"] = float(np.mean(best))
        out[f"best@{size}/std"] = float(np.std(best))
        out[f"worst@{size}/mean"] = float(np.mean(worst))
        out[f"worst@{size}/std"] = float(np.std(worst))
        if codes is not None:
            maj = _majority_values(vals, codes, idx)
            out[f"maj@{size}/mean"] = float(np.mean(maj))
            out[f"maj@{size}/std"] = float(np.std(maj))
    return out


def pass_ks(n: int) -> list[int]:
    """The k of the reported pass@k: 1, 2, 4, ... (< n), plus n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def _prompt_metrics(
    scores: list[float], preds: list[str | None] | None, correct: list[bool], n_bootstrap: int, seed: int
) -> dict[str, float]:
    n = len(scores)
    vals = np.asarray(scores, dtype=np.float64)
    c = int(sum(correct))
    m: dict[str, float] = {f"mean@{n}": float(np.mean(vals)), f"std@{n}": float(np.std(vals))}
    for k in pass_ks(n):
        m[f"pass@{k}"] = pass_at_k(n, c, k)
    boot = bootstrap_best_maj(vals, preds, [n], n_bootstrap=n_bootstrap, seed=seed)
    m[f"best@{n}"] = boot[f"best@{n}/mean"]
    if preds is not None:
        m[f"maj@{n}"] = boot[f"maj@{n}/mean"]
    return m


def _average(rows: list[dict[str, float]]) -> dict[str, float]:
    """Unweighted mean over prompts, key by key (keys in first-row order)."""
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


_RECORD_KEYS = {"prompt_id", "data_source", "sample", "score"}


def compute_eval_metrics(
    records: list[dict],
    dataset: str,
    threshold: float = 0.5,
    n_bootstrap: int = 1000,
    seed: int = 42,
) -> dict[str, Any]:
    """The eval JSON for one dataset from per-sample records.

    Each record: {"prompt_id", "data_source", "sample" (int index), "score" (float), "pred" (str | None),
    optional "correct" (bool)}. Metrics per prompt, averaged unweighted over prompts (overall and per
    data_source): mean@n, std@n, pass@k for k in 1, 2, 4, ..., n (a sample is correct when its "correct" is
    true, or without one when score >= `threshold`), best@n (verl bootstrap best@n/mean) and maj@n (bootstrap
    maj@n/mean; present when the records carry a "pred" key, a None pred being one more vote). Records with a
    "components" dict (the reward's named parts) give "reward_components": each part's mean over the samples.
    Prompts with more than the smallest sample count are truncated to their first n samples by `sample`
    index, and the JSON gets a "note" saying so.
    """
    if not records:
        raise ScirlError(f"no eval records for dataset {dataset!r}")
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    source: dict[str, str] = {}
    for r in records:
        missing = _RECORD_KEYS - r.keys()
        if missing:
            raise ScirlError(f"eval record is missing key(s) {sorted(missing)}: {r!r}")
        pid, src = str(r["prompt_id"]), str(r["data_source"])
        if source.setdefault(pid, src) != src:
            raise ScirlError(f"prompt {pid!r} has records from two data sources: {source[pid]!r} and {src!r}")
        by_prompt[pid].append(r)

    for pid, rs in by_prompt.items():
        rs.sort(key=lambda r: int(r["sample"]))
        idxs = [int(r["sample"]) for r in rs]
        if len(set(idxs)) != len(idxs):
            raise ScirlError(f"prompt {pid!r} has duplicate sample indices")

    counts = {pid: len(rs) for pid, rs in by_prompt.items()}
    n = min(counts.values())
    note = None
    if max(counts.values()) != n:
        n_trunc = sum(c > n for c in counts.values())
        note = (
            f"prompts have between {n} and {max(counts.values())} samples; {n_trunc} prompt(s) were truncated "
            f"to their first {n} samples by sample index so that every prompt uses n={n}"
        )
    use_preds = any("pred" in r for r in records)  # verl: maj@N whenever the reward reports a pred (None votes too)

    per_prompt: dict[str, dict[str, float]] = {}
    components: dict[str, list[float]] = defaultdict(list)
    for pid, rs in by_prompt.items():
        rs = rs[:n]
        for r in rs:
            for name, value in (r.get("components") or {}).items():
                components[name].append(float(value))
        scores = [float(r["score"]) for r in rs]
        preds = [r.get("pred") for r in rs] if use_preds else None
        correct = [bool(r["correct"]) if "correct" in r else float(r["score"]) >= threshold for r in rs]
        per_prompt[pid] = _prompt_metrics(scores, preds, correct, n_bootstrap, seed)

    sources: dict[str, list[dict[str, float]]] = defaultdict(list)
    for pid, m in per_prompt.items():
        sources[source[pid]].append(m)

    out: dict[str, Any] = {
        "dataset": dataset,
        "num_prompts": len(per_prompt),
        "n": n,
        "metrics": _average(list(per_prompt.values())),
        "by_source": {src: _average(rows) for src, rows in sources.items()},  # in order of first appearance
        "prompts_by_source": {src: len(rows) for src, rows in sources.items()},
    }
    if components:  # the reward's named parts (composite: format / trace / eed ...), mean over the samples that log it
        out["reward_components"] = {name: float(np.mean(v)) for name, v in sorted(components.items())}
    if note:
        out["note"] = note
    return out
