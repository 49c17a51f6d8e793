"""DAPO overlong reward shaping (arXiv 2503.14476; verl `workers/reward_manager/dapo.py`): a length penalty."""

from __future__ import annotations

import torch
from torch import Tensor

from scirl.errors import ScirlError


def overlong_penalty(length: Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> Tensor:
    """Soft overlong penalty per response, to ADD to the score.

    With L_exp = max_len - buffer_len:  0 if length <= L_exp, else -(length - L_exp) / buffer_len * factor,
    i.e. verl's min(-(length - L_exp) / buffer_len * factor, 0). It reaches -factor at length == max_len; like
    verl, it is not clipped for longer inputs. `length` is the response length in tokens (any shape; ints ok);
    the result is a float tensor of the same shape. buffer_len must be in (0, max_len].
    """
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len <= 0:
        raise ScirlError(f"overlong penalty: max_len must be a positive int, got {max_len!r}")
    if not isinstance(buffer_len, int) or isinstance(buffer_len, bool) or not 0 < buffer_len <= max_len:
        raise ScirlError(f"overlong penalty: buffer_len must be an int in (0, max_len={max_len}], got {buffer_len!r}")
    length = torch.as_tensor(length)
    if not length.is_floating_point():
        length = length.to(torch.get_default_dtype())
    expected = max_len - buffer_len
    return torch.clamp(-(length - expected) / buffer_len * float(factor), max=0.0)
