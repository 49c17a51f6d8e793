"""The teacher's context (reprompt): peer selection, <think> stripping, reference / none modes, template, truncation,
and the teacher batch (same response tokens, new prompts)."""

import pytest
import torch

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rollout.base import Trajectories
from scirl.rollout.hf_engine import left_pad
from scirl.train.reprompt import RepromptConfig, build_contexts, strip_thinking, teacher_batch

SYSTEM = {"role": "system", "content": "Answer with a letter."}


def _sample(pid, answer="B"):
    return Sample(prompt_id=pid, messages=[SYSTEM, {"role": "user", "content": f"Question {pid}?"}], answer=answer)


def _batch(scores, texts=None, uids=None, answers=None):
    uids = uids or ["u"] * len(scores)
    answers = answers or ["B"] * len(scores)
    samples = [_sample(u, a) for u, a in zip(uids, answers)]
    texts = texts or [f"response {i}" for i in range(len(scores))]
    return samples, uids, texts, scores


def _user(ctx):
    return ctx[-1]["content"]


def test_all_wrong_group_gets_no_context():
    contexts, mask = build_contexts(*_batch([0.0, 0.0, 0.2]), RepromptConfig())
    assert mask == [False, False, False] and contexts == [None, None, None]


def test_lone_correct_response_gets_none_its_wrong_peers_get_it():
    samples, uids, texts, scores = _batch([0.0, 1.0, 0.0, 0.0, 0.0], uids=["a", "a", "a", "b", "b"])
    contexts, mask = build_contexts(samples, uids, texts, scores, RepromptConfig())
    assert mask == [True, False, True, False, False]
    assert "Correct solution:\n\nresponse 1" in _user(contexts[0]) and _user(contexts[0]) == _user(contexts[2])
    assert contexts[1] is None and contexts[3] is None


def test_two_correct_responses_each_get_the_other_and_wrong_ones_get_the_first():
    samples, uids, texts, scores = _batch([0.0, 1.0, 0.5, 1.0])
    contexts, mask = build_contexts(samples, uids, texts, scores, RepromptConfig())
    assert mask == [True, True, True, True]
    assert "response 1" in _user(contexts[0])  # first successful in row order
    assert "response 2" in _user(contexts[1])  # the other one (score 0.5 >= threshold counts)
    assert "response 1" in _user(contexts[2]) and "response 1" in _user(contexts[3])
    # self-success allowed: the first successful row, itself included
    contexts, _ = build_contexts(samples, uids, texts, scores, RepromptConfig(dont_reprompt_on_self_success=False))
    assert all("response 1" in _user(c) for c in contexts)


def test_think_blocks_are_stripped_from_the_solution():
    texts = ["wrong", "<think>scratch\nwork</think>\n\nThe answer is B.<think>more</think> Done."]
    contexts, _ = build_contexts(*_batch([0.0, 1.0], texts=texts), RepromptConfig())
    assert _user(contexts[0]).count("Correct solution:\n\nThe answer is B.Done.\n\n") == 1
    assert "scratch" not in _user(contexts[0]) and "<think>" not in _user(contexts[0])
    assert strip_thinking("reasoning opened by the prompt</think>\nAnswer: B") == "Answer: B"
    assert strip_thinking("<think>\ncut off before closing, Answer: B") == "cut off before closing, Answer: B"
    assert strip_thinking("plain") == "plain"


def test_exact_user_content_and_system_messages_kept():
    cfg = RepromptConfig()
    contexts, _ = build_contexts(*_batch([0.0, 1.0], texts=["no", "yes it is B"]), cfg)
    expected = "Question u?" + "\nCorrect solution:\n\nyes it is B" + "" + "\n\nCorrectly solve the original question."
    assert contexts[0] == [SYSTEM, {"role": "user", "content": expected}]
    # feedback: only with include_feedback and non-empty; feedback alone gives a context
    fb = ["the answer is not A", "   "]
    contexts, mask = build_contexts(*_batch([0.0, 0.0]), RepromptConfig(include_feedback=True), feedback=fb)
    assert mask == [True, False]
    assert _user(contexts[0]) == ("Question u?\nFeedback from the environment:\n\nthe answer is not A"
                                  "\n\nCorrectly solve the original question.")
    _, mask = build_contexts(*_batch([0.0, 0.0]), cfg, feedback=fb)
    assert mask == [False, False]


def test_reference_mode_uses_the_gold_answer():
    samples, uids, texts, scores = _batch([0.0, 0.0, 1.0], answers=["C", None, "C"])
    contexts, mask = build_contexts(samples, uids, texts, scores, RepromptConfig(context="reference"))
    assert mask == [True, False, True] and contexts[1] is None
    assert _user(contexts[0]) == "Question u?\nCorrect solution:\n\nC\n\nCorrectly solve the original question."


def test_none_mode_keeps_the_original_messages_and_bad_mode_errors():
    samples, uids, texts, scores = _batch([0.0, 1.0])
    contexts, mask = build_contexts(samples, uids, texts, scores, RepromptConfig(context="none"))
    assert mask == [True, True] and contexts == [s.messages for s in samples]
    with pytest.raises(ScirlError, match="distill.teacher_context"):
        build_contexts(samples, uids, texts, scores, RepromptConfig(context="gold"))


def _traj(tok, samples, responses):
    prompts = [tok.apply_chat_template(s.messages, add_generation_prompt=True, tokenize=True) for s in samples]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    pid, pmask = left_pad(prompts, tok.pad_token_id)
    width = max(len(r) for r in responses)
    rid = torch.full((len(responses), width), tok.pad_token_id)
    rmask = torch.zeros(len(responses), width)
    for i, r in enumerate(responses):
        rid[i, : len(r)] = torch.tensor(r)
        rmask[i, : len(r)] = 1
    return Trajectories(prompt_ids=pid, prompt_mask=pmask, response_ids=rid, response_mask=rmask,
                        rollout_logprobs=-rmask, uid=[s.prompt_id for s in samples], sample_index=[0, 1, 2],
                        truncated=torch.zeros(3, dtype=torch.bool), texts=["a", "b", "c"],
                        pad_id=tok.pad_token_id, extra={"k": 1})


def test_teacher_batch_keeps_responses_and_truncates(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    long_answer = "the answer is B " * 40
    samples, uids, texts, scores = _batch([0.0, 1.0, 0.0], texts=["x", long_answer, "y"])
    responses = [tok.encode(t)[:6] for t in texts]
    traj = _traj(tok, samples, responses)
    cfg = RepromptConfig()
    contexts, mask = build_contexts(samples, uids, texts, scores, cfg)
    assert mask == [True, False, True]
    teacher, m = teacher_batch(traj, contexts, mask, tok, cfg)
    assert m.dtype == torch.bool and m.tolist() == mask
    assert teacher.response_ids is traj.response_ids and teacher.response_mask is traj.response_mask
    assert teacher.rollout_logprobs is traj.rollout_logprobs and teacher.uid == traj.uid
    assert teacher.extra == {"k": 1} and teacher.prompt_mask.dtype == traj.prompt_mask.dtype
    full = tok.apply_chat_template(contexts[0], add_generation_prompt=True, tokenize=True, enable_thinking=False)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    assert len(full) > len(traj.prompt_ids[0])
    row0 = teacher.prompt_ids[0][teacher.prompt_mask[0].bool()].tolist()
    assert row0 == full
    row1 = teacher.prompt_ids[1][teacher.prompt_mask[1].bool()].tolist()  # no context: the original prompt
    assert row1 == traj.prompt_ids[1][traj.prompt_mask[1].bool()].tolist()

    short = RepromptConfig(max_len=20)
    teacher, _ = teacher_batch(traj, contexts, mask, tok, short)
    lengths = teacher.prompt_mask.sum(1).tolist()
    assert lengths[0] == 20 and lengths[2] == 20
    assert teacher.prompt_ids[0][teacher.prompt_mask[0].bool()].tolist() == full[:20]  # right-truncated
    assert bool(teacher.prompt_mask[:, -1].all())  # still left-padded
