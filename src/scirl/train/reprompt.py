"""The teacher's context c_i (the "reprompt") for each response: RLSD / SDPO self-teachers and on-policy distillation.

SDPO `_maybe_build_self_distillation_batch` semantics (ALGORITHMS.md §7):
  peer_solution  the first OTHER response of the same group (same uid, row order) scoring >= success_threshold,
                 its <think> blocks stripped, goes into the solution slot. All-wrong groups and a lone correct
                 response get no context (mask False): their advantage / loss stays plain.
  reference      the gold answer (Sample.answer) fills the solution slot; rows without an answer get no context.
  none           the original messages for every row (mask all True): OPD with an external teacher.
The user message becomes template.format(prompt=<original user content>, solution=..., feedback=...); the other
messages (system prompt, any earlier turns) are kept. Feedback is used only with include_feedback and when non-empty.
The context is chat-templated (add_generation_prompt, enable_thinking) and right-truncated to max_len tokens; the
teacher then scores the SAME response tokens after it (token in, token out).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass

import torch

from scirl.data.prompts import chat_ids
from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rollout.base import Trajectories
from scirl.rollout.hf_engine import left_pad

CONTEXT_MODES = ("peer_solution", "reference", "none")


@dataclass
class RepromptConfig:
    context: str = "peer_solution"  # peer_solution | reference | none
    success_threshold: float = 0.5
    template: str = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
    solution_template: str = "\nCorrect solution:\n\n{solution}"
    feedback_template: str = "\nFeedback from the environment:\n\n{feedback}"
    include_feedback: bool = False
    max_len: int = 10240  # max_reprompt_len, tokens (right-truncated)
    enable_thinking: bool = False  # chat template flag for the teacher's context
    dont_reprompt_on_self_success: bool = True


_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_OPEN = re.compile(r"<think>\s*")


def strip_thinking(text: str) -> str:
    """Remove every `<think>...</think>` block (and the whitespace after it).

    - An orphan `</think>` (the chat template opened the block in the prompt): everything up to and including the
      last one is thinking and is dropped.
    - An unclosed `<think>` (reasoning cut by max_new_tokens): only the tag is removed and the text kept. The
      response was scored as successful, so its answer is somewhere in that text; dropping it would leave an
      empty "solution".
    """
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1].lstrip()
    return _OPEN.sub("", text)


def _user_index(messages: list[dict]) -> int | None:
    for k in range(len(messages) - 1, -1, -1):
        if messages[k].get("role") == "user":
            return k
    return None


def render_messages(messages: list[dict], cfg: RepromptConfig, solution: str | None,
                    feedback: str | None) -> list[dict]:
    """A copy of `messages` whose last user message is cfg.template filled with its content, the solution and the
    feedback sections (each "" when None). Without a user message, the filled template is appended as one."""
    out = [dict(m) for m in messages]
    k = _user_index(out)
    if k is None:
        out.append({"role": "user", "content": ""})
        k = len(out) - 1
    out[k]["content"] = cfg.template.format(
        prompt=out[k]["content"],
        solution="" if solution is None else cfg.solution_template.format(solution=solution),
        feedback="" if feedback is None else cfg.feedback_template.format(feedback=feedback),
    )
    return out


def build_contexts(samples: list[Sample], uids: list[str], texts: list[str], scores, cfg: RepromptConfig,
                   feedback: list[str | None] | None = None) -> tuple[list[list[dict] | None], list[bool]]:
    """Per row i (Sample samples[i], group uids[i], decoded response texts[i], score scores[i]): the teacher's chat
    messages, or None when the row has no context; and the mask (True iff the row has a context).

    A row has a context iff it gets a solution (peer / reference) or a used feedback string."""
    if cfg.context not in CONTEXT_MODES:
        raise ScirlError(f"distill.teacher_context: unknown context {cfg.context!r}; expected one of "
                         f"{', '.join(CONTEXT_MODES)}")
    n = len(samples)
    scores = [float(s) for s in (scores.tolist() if isinstance(scores, torch.Tensor) else scores)]
    if not (len(uids) == len(texts) == len(scores) == n) or (feedback is not None and len(feedback) != n):
        raise ValueError("build_contexts: samples, uids, texts, scores (and feedback) must have one entry per row")
    if cfg.context == "none":
        return [[dict(m) for m in s.messages] for s in samples], [True] * n

    groups: dict[str, list[int]] = defaultdict(list)  # uid -> its successful rows, in row order
    for i, (uid, score) in enumerate(zip(uids, scores)):
        if score >= cfg.success_threshold:
            groups[uid].append(i)

    contexts: list[list[dict] | None] = []
    mask: list[bool] = []
    for i, sample in enumerate(samples):
        solution = None
        if cfg.context == "peer_solution":
            peers = [j for j in groups.get(uids[i], []) if j != i or not cfg.dont_reprompt_on_self_success]
            if peers:
                solution = strip_thinking(texts[peers[0]])
        elif sample.answer is not None:  # reference
            solution = str(sample.answer)
        fb = feedback[i] if cfg.include_feedback and feedback is not None else None
        fb = fb if isinstance(fb, str) and fb.strip() else None
        if solution is None and fb is None:
            contexts.append(None)
            mask.append(False)
        else:
            contexts.append(render_messages(sample.messages, cfg, solution, fb))
            mask.append(True)
    return contexts, mask


def teacher_batch(traj: Trajectories, contexts: list[list[dict] | None], mask, tokenizer,
                  cfg: RepromptConfig) -> tuple[Trajectories, torch.Tensor]:
    """`traj` with each context row's prompt replaced by its chat-templated context (right-truncated to
    cfg.max_len tokens, left-padded); response_ids, masks and every other field are traj's own (same tensors).
    Rows without a context keep their original prompt (their teacher log-probs are not used).

    Returns (the teacher's Trajectories, the [B] bool mask)."""
    mask_t = torch.as_tensor(list(mask), dtype=torch.bool).reshape(-1)
    if len(contexts) != len(traj) or mask_t.numel() != len(traj):
        raise ValueError(f"teacher_batch: {len(contexts)} contexts / {mask_t.numel()} mask entries "
                         f"for {len(traj)} rows")
    if cfg.max_len < 1:
        raise ScirlError(f"distill.max_reprompt_len must be >= 1, got {cfg.max_len}")
    prompts = []
    for i, ctx in enumerate(contexts):
        if ctx is not None and mask_t[i]:
            prompts.append(chat_ids(tokenizer, ctx, cfg.enable_thinking)[: cfg.max_len])
        else:
            prompts.append(traj.prompt_ids[i][traj.prompt_mask[i].bool()].tolist())
    ids, pmask = left_pad(prompts, traj.pad_id)
    teacher = dataclasses.replace(traj, prompt_ids=ids, prompt_mask=pmask.to(traj.prompt_mask.dtype),
                                  extra=dict(traj.extra))
    return teacher, mask_t
