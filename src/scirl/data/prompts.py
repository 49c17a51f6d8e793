"""Prompt templates and prompt tokenization: Sample.problem -> chat messages -> token ids (dedup, long prompts).

Templates (`data.template`):
  auto         each dataset's own default (math: cot_boxed, SciKnowEval: answer_tag, tiny task: plain)
  cot_boxed    problem + "Please reason step by step, and put your final answer within \\boxed{}." (Qwen-Math)
  answer_tag   SciKnowEval / SDPO: a system message asking for <reasoning>...</reasoning><answer>X</answer>
               (the row's own system text when it has one), the problem as the user message
  plain        the problem as the user message, nothing added
  source       the dataset's original prompt text when it has one (e.g. DAPO's "Answer: $Answer" wrapper)
`data.system_prompt` (when set) replaces the template's system message. `data.enable_thinking` goes to the
chat template. Prompts longer than `data.max_prompt_length` tokens are dropped and counted
(`data.truncation: drop`), cut (`left` keeps the end, `right` keeps the start) or rejected (`error`).
"""

from __future__ import annotations

from typing import Callable

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.registry import lookup, register_in

COT_BOXED_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
ANSWER_TAG_SYSTEM = (
    "Given a question and options, please select the right answer. Respond in the following format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
    "For the answer, only output the letter(s) of the correct option(s) and nothing else. For example, if the "
    "answer is \"A\", just output:\n<answer>\nA\n</answer>"
)
TRUNCATION_MODES = ("drop", "left", "right", "error")

# name -> fn(sample) -> (system text or None, user text)
TEMPLATES: dict[str, Callable[[Sample], tuple[str | None, str]]] = {}


def register_template(name: str):
    return register_in(TEMPLATES, "prompt template", name)


def _problem(s: Sample) -> str:
    if s.problem:
        return s.problem
    users = [m["content"] for m in s.messages if m.get("role") == "user"]
    if not users:
        raise ScirlError(f"sample {s.prompt_id!r} has no problem text")
    return users[-1]


@register_template("plain")
def plain(s: Sample) -> tuple[str | None, str]:
    return s.metadata.get("system"), _problem(s)


@register_template("cot_boxed")
def cot_boxed(s: Sample) -> tuple[str | None, str]:
    return None, f"{_problem(s)}\n{COT_BOXED_SUFFIX}"


@register_template("answer_tag")
def answer_tag(s: Sample) -> tuple[str | None, str]:
    return s.metadata.get("system") or ANSWER_TAG_SYSTEM, _problem(s)


@register_template("source")
def source(s: Sample) -> tuple[str | None, str]:
    return s.metadata.get("system"), s.metadata.get("source_prompt") or _problem(s)


def default_template(sample: Sample) -> str:
    """The template `auto` picks: the sample's dataset default, else plain."""
    from scirl.data.datasets import find_dataset

    spec = find_dataset(str(sample.data_source).split("/")[0])
    return spec.template if spec is not None else "plain"


def apply_template(samples: list[Sample], template: str = "auto", system_prompt: str | None = None) -> list[Sample]:
    """Set each sample's chat `messages` from its problem (in place; returns the list)."""
    if template != "auto":
        lookup(TEMPLATES, "prompt template", template)  # fail before touching anything
    for s in samples:
        fn = lookup(TEMPLATES, "prompt template", default_template(s) if template == "auto" else template)
        system, user = fn(s)
        if system_prompt is not None:
            system = system_prompt or None
        s.messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return samples


def dedup_by_prompt(samples: list[Sample]) -> tuple[list[Sample], int]:
    """Keep the first sample of each distinct rendered prompt (its messages); returns (kept, number removed)."""
    seen: set[tuple] = set()
    kept = []
    for s in samples:
        key = tuple((m["role"], m["content"]) for m in s.messages)
        if key not in seen:
            seen.add(key)
            kept.append(s)
    return kept, len(samples) - len(kept)


def chat_ids(tokenizer, messages, enable_thinking: bool, tools: list[dict] | None = None) -> list[int]:
    """Prompt ids; `tools` (JSON schemas, rollout.agent) go to the chat template's own `tools=` argument."""
    kwargs = {"tools": tools} if tools else {}
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        enable_thinking=enable_thinking, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def tokenize_prompts(samples: list[Sample], tokenizer, max_len: int, enable_thinking: bool, key: str,
                     truncation: str = "drop", tools: list[dict] | None = None):
    """Chat-template each prompt. Too long: dropped and counted, cut (left/right) and counted, or an error.

    Returns (kept samples, their token ids, number dropped or cut)."""
    if truncation not in TRUNCATION_MODES:
        raise ScirlError(f"data.truncation: unknown mode {truncation!r}; expected one of {', '.join(TRUNCATION_MODES)}")
    kept, ids, over = [], [], 0
    for s in samples:
        tokens = chat_ids(tokenizer, s.messages, enable_thinking, tools)
        if len(tokens) > max_len:
            over += 1
            if truncation == "drop":
                continue
            if truncation == "error":
                raise ScirlError(f"{key}: prompt {s.prompt_id!r} has {len(tokens)} tokens, more than "
                                 f"data.max_prompt_length={max_len} (set data.truncation to drop, left or right)")
            tokens = tokens[-max_len:] if truncation == "left" else tokens[:max_len]
        kept.append(s)
        ids.append(tokens)
    if not kept:
        raise ScirlError(f"{key}: every prompt is longer than data.max_prompt_length={max_len} tokens")
    return kept, ids, over
