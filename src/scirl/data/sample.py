"""The Sample schema: one prompt with its reference answer, the unit every dataset loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANSWER_TYPES = ("numeric", "expression", "mcq", "subparts")


@dataclass
class Sample:
    """One prompt.

    `problem` is the raw task text shown to the model (for MCQ it includes the lettered options); a prompt
    template (scirl.data.templates) turns it into chat `messages` ({"role", "content"}). `answer` is the
    reference answer, None for prompt-only rows (they cannot be graded). `reward` / `reward_info` name the
    dataset's own grader (used by the `dataset` reward and by `scirl eval`); None means "use reward.name".
    """

    prompt_id: str
    messages: list[dict[str, str]]
    answer: str | None
    answer_type: str = "numeric"  # numeric | expression | mcq | subparts
    data_source: str = "unknown"
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str = ""
    reward: str | None = None
    reward_info: dict[str, Any] = field(default_factory=dict)
