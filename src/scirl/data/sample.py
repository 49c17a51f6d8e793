"""The Sample schema: one prompt with its reference answer, the unit every dataset loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One prompt. `messages` are chat messages ({"role", "content"}); `answer` is the reference answer."""

    prompt_id: str
    messages: list[dict[str, str]]
    answer: str
    answer_type: str = "numeric"  # numeric | expression | mcq | subparts
    data_source: str = "unknown"
    metadata: dict[str, Any] = field(default_factory=dict)
