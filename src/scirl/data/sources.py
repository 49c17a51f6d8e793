"""The named datasets: one registered loader per source, each mapping its rows to the Sample schema.

Every real loader reads its rows from `req.data_dir / <folder>/<file>` (laid out as ../shared/data is) when a
data folder is set, else from the hub through `datasets.load_dataset(hub_id, ...)`; both kinds of rows go
through the same per-row mapping. The loaders live in `sources_math` (aime24, aime25, amc23, gsm8k,
dapo_math_17k) and `sources_physics` (sciknoweval_physics, phybench, olympiadbench_physics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scirl.data.datasets import DATASETS, LoadRequest, register_dataset
from scirl.data.local_files import _MISSING, _read, _short, get_field
from scirl.data.sample import Sample
from scirl.errors import ScirlError

SYNTHETIC_DEFAULT_SIZE = {"train": 1000, "val": 64, "eval": 64}


def _synthetic_split(req: LoadRequest, make_problems) -> list[Sample]:
    """A seeded synthetic task's problems: variant `auto` takes the train split for training, val otherwise."""
    split = req.variant if req.variant in ("train", "val") else ("train" if req.role == "train" else "val")
    size = req.size if req.size is not None else SYNTHETIC_DEFAULT_SIZE.get(req.role, 64)
    samples = make_problems(split, size, seed=req.seed)
    for s in samples:
        s.problem = s.messages[0]["content"]
    return samples


@register_dataset("tiny_physics", reward="boxed_numeric", template="plain", variants=("auto", "train", "val"),
                  description="the seeded synthetic physics task (train 1053 / val 329 distinct problems)")
def tiny_physics(req: LoadRequest) -> list[Sample]:
    """Variant `auto` takes the train split for training and the val split otherwise."""
    from scirl.data.synthetic import make_problems

    return _synthetic_split(req, make_problems)


@register_dataset("tiny_tools", reward="tcr", template="plain", variants=("auto", "train", "val"),
                  description="the seeded synthetic tool task: products of two 4-digit numbers (calculator)")
def tiny_tools(req: LoadRequest) -> list[Sample]:
    """Variant `auto` takes the train split for training and the val split otherwise."""
    from scirl.data.synthetic_tools import make_problems

    return _synthetic_split(req, make_problems)


# ------------------------------------------------------------------------------------------------ plumbing
@dataclass(frozen=True)
class Hub:
    """Where a variant's rows live on the hub: `datasets.load_dataset(hub_id, config, split=split, **kwargs)`."""

    hub_id: str
    split: str = "test"
    config: str | None = None
    kwargs: dict = field(default_factory=dict)


@dataclass
class Rows:
    """The rows of one file (or hub split) of a named dataset, and how to name a row in an error."""

    dataset: str
    where: str  # the file path, or "hub 'id'"
    unit: str  # "line" | "row"
    rows: list[tuple[int, dict]]

    def need(self, n: int, row: dict, name: str) -> Any:
        """row[name] (dotted paths allowed), or a ScirlError naming the dataset, file and line."""
        value = get_field(row, name)
        if value is _MISSING:
            raise ScirlError(f"dataset {self.dataset}: field {name!r} missing in {self.where} {self.unit} {n}")
        return value


def dataset_rows(req: LoadRequest, name: str, rel: str, hub: Hub | None) -> Rows:
    """The rows of `<data_dir>/<rel>`, or of the hub copy when no data folder is set."""
    default = DATASETS[name].variants[0] if name in DATASETS else None
    label = name if req.variant in (None, default) else f"{name}/{req.variant}"
    if req.data_dir is not None:
        path = Path(req.data_dir) / rel
        if not path.is_file():
            raise ScirlError(f"dataset {label}: expected file {str(path)!r} in the data folder {str(req.data_dir)!r} "
                             f"(data.data_dir / $SCIRL_DATA_DIR)")
        rows, unit = _read(path, f"dataset {label}")
        return Rows(label, str(path), unit, rows)
    hint = f"set data.data_dir or $SCIRL_DATA_DIR to a folder with {rel}"
    if hub is None:
        raise ScirlError(f"dataset {label}: no local data folder ({hint}); this variant has no hub copy")
    from scirl.hub import hub_problem, offline_env

    problem = hub_problem()  # fail fast instead of a minute of retries; offline mode reads the datasets cache
    if problem and not offline_env():
        raise ScirlError(f"dataset {label}: no local data folder ({hint}) and hub {hub.hub_id!r} cannot be reached "
                         f"({problem})")
    try:
        import datasets

        ds = datasets.load_dataset(hub.hub_id, hub.config, split=hub.split, **hub.kwargs)
        rows = [(i, dict(r)) for i, r in enumerate(ds, 1)]
    except Exception as e:  # noqa: BLE001 - offline, missing, renamed... all mean "no hub copy here"
        raise ScirlError(f"dataset {label}: no local data folder ({hint}) and hub {hub.hub_id!r} could not be "
                         f"loaded: {type(e).__name__}: {_short(e)}") from None
    return Rows(label, f"hub {hub.hub_id!r}", "row", rows)


def strip_dollars(s: str) -> str:
    """`$x$` / `$$x$$` / `\\[x\\]` / `\\(x\\)` -> `x` (whitespace trimmed; only a wrapper around the whole)."""
    s = s.strip()
    for a, b in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b) and a not in s[len(a): len(s) - len(b)]:
            s = s[len(a): len(s) - len(b)].strip()
    return s


from scirl.data import sources_math, sources_physics  # noqa: E402,F401  (register the real datasets)
