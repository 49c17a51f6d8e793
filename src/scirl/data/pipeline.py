"""From `data.*` config to ready prompts: load every source, apply the template, dedup, tokenize, and sample.

Used by the trainer (train / val) and by `scirl eval`; every count it drops is reported in `stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scirl.data.datasets import load_sources, parse_sources, resolve_data_dir
from scirl.data.prompts import apply_template, dedup_by_prompt, tokenize_prompts
from scirl.data.sample import Sample
from scirl.data.sampler import MixturePromptSampler, PromptSampler
from scirl.errors import ScirlError


@dataclass
class PromptSet:
    """Prompts of one role, grouped by source in the order the sources were listed."""

    samples: list[Sample]
    ids: list[list[int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # source labels, in order
    weights: list[float] | None = None  # mixing weights per label (train only)
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. a size cap that kept fewer rows than a source has

    def sizes(self) -> list[int]:
        return [sum(1 for s in self.samples if s.data_source == lab) for lab in self.labels]


def require_answers(samples: list[Sample], key: str) -> None:
    """Refuse prompt-only rows where grading is needed, naming the source and the count."""
    missing = [s for s in samples if s.answer is None]
    if missing:
        src = missing[0].data_source
        n_src = sum(1 for s in samples if s.data_source == src)
        n_missing = sum(1 for s in missing if s.data_source == src)
        raise ScirlError(f"{key}: {n_missing} of {n_src} prompts of {src!r} have no reference answer (prompt-only "
                         f"rows, e.g. {missing[0].prompt_id!r}) and cannot be graded; use a variant with answers "
                         f"(e.g. 'phybench' = the 100 answered PHYBench items)")


def require_rewards(samples: list[Sample], reward_name: str, key: str, flag: str = "reward.name") -> None:
    """With the `dataset` reward every sample must name its own grader (local files do not)."""
    if reward_name != "dataset":
        return
    bad = next((s for s in samples if not s.reward), None)
    if bad is not None:
        raise ScirlError(f"{key}: {bad.data_source!r} has no reward of its own (a local file); set {flag} to a "
                         f"reward such as math, mcq or boxed_numeric")


def load_prompt_set(d, role: str, spec: str | None = None, size: int | None = None, need_answers: bool = True,
                    key: str | None = None) -> PromptSet:
    """Load `spec` (default data.train / data.val by role), template it and drop duplicate prompts."""
    key = key or f"data.{role}"
    spec = spec if spec is not None else (d.train if role == "train" else d.val)
    if size is None:
        size = d.train_size if role == "train" else d.val_size
    sources = parse_sources(spec, key)
    capped: dict[str, tuple[int, int]] = {}
    samples = load_sources(sources, role, size, d.seed, resolve_data_dir(d.data_dir), d.fields, key, capped)
    size_key = {"train": "data.train_size", "val": "data.val_size"}.get(role, "--limit")
    notes = [f"{size_key}={size} keeps {kept} of the {total} prompts of {label}"
             for label, (kept, total) in capped.items()]
    if need_answers:
        require_answers(samples, key)
    apply_template(samples, d.template, d.system_prompt)
    loaded, duplicates = len(samples), 0
    if d.dedup:
        samples, duplicates = dedup_by_prompt(samples)
    weights = [s.weight for s in sources] if all(s.weight is not None for s in sources) else None
    return PromptSet(samples, labels=[s.label for s in sources], weights=weights,
                     stats={"loaded": loaded, "duplicates": duplicates}, notes=notes)


def tokenize_prompt_set(ps: PromptSet, tokenizer, d, key: str, tools: list[dict] | None = None) -> PromptSet:
    """Chat-template the prompts (with the tools' schemas when `tools`, rollout.agent)."""
    ps.samples, ps.ids, over = tokenize_prompts(ps.samples, tokenizer, d.max_prompt_length, d.enable_thinking, key,
                                                d.truncation, tools)
    ps.stats["too_long_" + ("dropped" if d.truncation == "drop" else "truncated")] = over
    ps.stats["prompts"] = len(ps.samples)
    return ps


def make_sampler(ps: PromptSet, batch_size: int, seed: int, shuffle: bool):
    """A PromptSampler over all prompts, or a MixturePromptSampler when the sources carry weights."""
    if ps.weights is None or len(ps.labels) == 1:
        return PromptSampler(len(ps.samples), batch_size, seed, shuffle)
    sizes = ps.sizes()
    empty = [lab for lab, n in zip(ps.labels, sizes) if n == 0]
    if empty:
        raise ScirlError(f"data.train: source {empty[0]!r} has no prompts left after filtering")
    return MixturePromptSampler(sizes, ps.weights, batch_size, seed, shuffle)


def describe(ps: PromptSet) -> str:
    """One line, e.g. '1053 prompts (aime24 30, amc23 40); 2 duplicates, 0 too long dropped'."""
    parts = ", ".join(f"{lab} {n}" for lab, n in zip(ps.labels, ps.sizes()))
    extra = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in ps.stats.items() if k not in ("loaded", "prompts"))
    return f"{len(ps.samples)} prompts ({parts}); {extra}" + "".join(f"; note: {n}" for n in ps.notes)
