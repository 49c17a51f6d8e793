"""The dataset registry and source specs: which named dataset (or local file) a recipe means, loaded as Samples.

A source spec is one string, as written in `data.train` / `data.val` or `scirl eval --data`:
  NAME                 a registered dataset in its default variant   (`aime24`, `sciknoweval_physics`)
  NAME/VARIANT         one of its variants                          (`sciknoweval_physics/sdpo_train`)
  PATH                 a local .json / .jsonl / .parquet file read with `data.fields` (any other dataset)
and a mixture is a comma-separated list with optional weights: `dapo_math_17k:0.7,sciknoweval_physics:0.3`.

Named datasets read their files from a data folder (`data.data_dir`, else $SCIRL_DATA_DIR) laid out as
`../shared/data` is; without one they go to the hub through `datasets.load_dataset(hub_id)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.registry import unknown_name_error

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class LoadRequest:
    """What a loader is asked for. `role` is train | val | eval; `size` None means every row."""

    variant: str | None = None
    data_dir: Path | None = None
    role: str = "eval"
    size: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader and the defaults a recipe gets when it names it.

    `reward` / `reward_info` grade its samples (the `dataset` reward and `scirl eval` use them); `template` is the
    prompt template used when `data.template` is `auto`; a sample counts as correct for pass@k when its score is
    >= `correct_threshold`. `variants` lists the accepted VARIANT names, the first being the default.
    """

    name: str
    loader: Callable[[LoadRequest], list[Sample]]
    reward: str
    template: str = "cot_boxed"
    variants: tuple[str, ...] = ("default",)
    reward_info: dict = field(default_factory=dict)
    correct_threshold: float = 0.5
    description: str = ""


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, *, reward: str, template: str = "cot_boxed", variants: tuple[str, ...] = ("default",),
                     reward_info: dict | None = None, correct_threshold: float = 0.5,
                     description: str = "") -> Callable:
    """Decorator: register `loader(LoadRequest) -> list[Sample]` as dataset `name` with its defaults."""

    def deco(loader: Callable[[LoadRequest], list[Sample]]) -> Callable:
        if name in DATASETS and DATASETS[name].loader is not loader:
            raise ScirlError(f"dataset {name!r} is already registered")
        DATASETS[name] = DatasetSpec(name, loader, reward, template, tuple(variants), dict(reward_info or {}),
                                     correct_threshold, description)
        return loader

    return deco


def _ensure_registered() -> None:
    from scirl.data import sources  # noqa: F401  (registers the named datasets)


def get_dataset(name: str) -> DatasetSpec:
    _ensure_registered()
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, list(DATASETS))
    return DATASETS[name]


def find_dataset(name: str) -> DatasetSpec | None:
    """The registered dataset `name`, or None (no error): e.g. to pick a default for a data_source label."""
    _ensure_registered()
    return DATASETS.get(name)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """`data.data_dir`, else $SCIRL_DATA_DIR, else None (hub). A folder that does not exist is an error."""
    value = data_dir if data_dir not in (None, "") else os.environ.get("SCIRL_DATA_DIR") or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        src = "data.data_dir" if data_dir not in (None, "") else "$SCIRL_DATA_DIR"
        raise ScirlError(f"{src}: folder {str(path)!r} does not exist")
    return path


@dataclass(frozen=True)
class SourceSpec:
    """One parsed item of a source list: a registered name (+ variant) or a local path, and its mixing weight."""

    text: str
    name: str | None
    variant: str | None
    path: Path | None
    weight: float | None

    @property
    def label(self) -> str:
        """The data_source label of its samples and of the eval JSON."""
        if self.path is not None:
            return self.path.stem
        return self.name if self.variant is None else f"{self.name}/{self.variant}"


def _looks_like_path(text: str) -> bool:
    return text.lower().endswith(LOCAL_SUFFIXES) or os.sep in text and Path(text).exists()


def parse_source(text: str, key: str = "data") -> SourceSpec:
    """`NAME`, `NAME/VARIANT` or `PATH`, each with an optional `:WEIGHT` suffix."""
    raw = text.strip()
    weight = None
    head, sep, tail = raw.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            weight = float(tail)
        except ValueError:
            raise ScirlError(f"{key}: mixing weight {tail!r} in {raw!r} is not a number") from None
        if not weight > 0:
            raise ScirlError(f"{key}: mixing weight in {raw!r} must be > 0")
        raw = head.strip()
    if not raw:
        raise ScirlError(f"{key}: empty dataset name in {text!r}")
    if _looks_like_path(raw):
        return SourceSpec(text, None, None, Path(raw).expanduser(), weight)
    name, _, variant = raw.partition("/")
    spec = get_dataset_for(key, name)
    if variant and variant not in spec.variants:
        raise ScirlError(f"{key}: {unknown_name_error(f'variant of {name}', variant, list(spec.variants))}")
    return SourceSpec(text, name, variant or None, None, weight)


def get_dataset_for(key: str, name: str) -> DatasetSpec:
    try:
        return get_dataset(name)
    except ScirlError as e:
        raise ScirlError(f"{key}: {e} (or a path to a local .json/.jsonl/.parquet file)") from None


def parse_sources(text: str, key: str = "data") -> list[SourceSpec]:
    """A comma-separated source list. Weights are all given or all omitted (omitted: sources concatenated)."""
    items = [parse_source(part, key) for part in str(text).split(",") if part.strip()]
    if not items:
        raise ScirlError(f"{key}: no dataset given")
    weighted = [s.weight is not None for s in items]
    if any(weighted) and not all(weighted):
        raise ScirlError(f"{key}: give a weight to every source or to none, got {text!r}")
    labels = [s.label for s in items]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ScirlError(f"{key}: source {dup[0]!r} is listed twice")
    return items


def load_source(src: SourceSpec, role: str, size: int | None, seed: int, data_dir: Path | None,
                fields: dict | None = None, key: str = "data", capped: dict | None = None) -> list[Sample]:
    """The samples of one source, each carrying its dataset's reward and data_source label. When `size` keeps
    fewer rows than the source has, `capped[label] = (kept, total)`."""
    if src.path is not None:
        from scirl.data.local_files import load_local_file

        rows = load_local_file(src.path, fields or {}, data_source=src.label, key=key)
    else:
        spec = get_dataset(src.name)
        req = LoadRequest(variant=src.variant or spec.variants[0], data_dir=data_dir, role=role, size=size, seed=seed)
        rows = spec.loader(req)
    samples = rows[:size]
    if capped is not None and len(samples) < len(rows):
        capped[src.label] = (len(samples), len(rows))
    if src.path is None:
        for s in samples:
            s.data_source = src.label
            if s.reward is None:
                s.reward, s.reward_info = spec.reward, {**spec.reward_info, **s.reward_info}
            s.metadata.setdefault("correct_threshold", spec.correct_threshold)
    if not samples:
        raise ScirlError(f"{key}: dataset {src.text!r} is empty")
    return samples


def load_sources(sources: list[SourceSpec], role: str, size: int | None, seed: int, data_dir: Path | None,
                 fields: dict | None = None, key: str = "data", capped: dict | None = None) -> list[Sample]:
    """The samples of every source, concatenated in the order given (see load_source for `capped`)."""
    return [s for src in sources for s in load_source(src, role, size, seed, data_dir, fields, key, capped)]


def load_dataset_split(name: str, split: str, size: int | None, seed: int, data_dir=None,
                       fields: dict | None = None) -> list[Sample]:
    """Every source of `name` (a source list) for role `split`, concatenated in the order given."""
    key = f"data.{split}"
    return load_sources(parse_sources(name, key), split, size, seed, resolve_data_dir(data_dir), fields, key)
