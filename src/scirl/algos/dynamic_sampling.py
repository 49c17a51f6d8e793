"""DAPO dynamic sampling (verl `recipe/dapo` `filter_groups`): which prompt groups carry a learning signal."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from scirl.errors import ScirlError


def filter_groups(index: Sequence[str], metric: Sequence[float]) -> list[str]:
    """The uids to KEEP, in order of first appearance: groups whose `metric` has np.std > 0, or of size 1.

    `index[i]` is the group key (uid) of trajectory i and `metric[i]` its value (acc / seq_reward /
    seq_final_reward). As in verl the std is numpy's population std (ddof=0) compared with > 0 exactly;
    a group containing nan has a nan std and is dropped (unless it is a singleton).
    """
    keys = index.tolist() if hasattr(index, "tolist") else list(index)
    values = metric.tolist() if hasattr(metric, "tolist") else list(metric)
    if len(keys) != len(values):
        raise ScirlError(f"filter_groups: {len(keys)} uids but {len(values)} metric values")
    groups: dict = {}
    for k, v in zip(keys, values):
        groups.setdefault(k, []).append(float(v))
    return [k for k, vals in groups.items() if len(vals) == 1 or np.std(vals) > 0]
