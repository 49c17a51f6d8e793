"""reward.overlap under rollout.agent: AgentEngine.stream yields whole prompt groups after the turn their last row
ended (groups that answer at once come after turn 1, groups that call a tool after turn 2), so they are scored
while the others take more turns; the rows, extras and scores equal the sequential path's, and
multi_turn_generate puts early-finishing groups back in prompt order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scirl.agent.engine import AgentEngine
from scirl.agent.rollout import multi_turn_generate
from scirl.agent.tools import resolve_tools
from scirl.data.sample import Sample
from scirl.rewards import RewardPool
from scirl.rewards.overlap import sample_and_score
from scirl.rollout.assemble import Sample as Row
from scirl.rollout.assemble import to_trajectories
from scirl.rollout.base import SamplingParams
from test_agent_training import ANSWER, CALL, TEMPLATE

REWARD = "tests/helpers/agent_info_reward.py:score"


class GroupScripted:
    """Prompts with an even uid call the calculator on every sample (then answer); odd ones answer at once."""

    shares_module = True

    def __init__(self, tok):
        self.tok, self.calls = tok, []

    def generate(self, prompts, uids, sampling):
        self.calls.append(list(uids))
        rows = []
        for p, u in zip(prompts, uids):
            second = "<tool_response>" in self.tok.decode(p)
            text = CALL if int(u) % 2 == 0 and not second else ANSWER
            for j in range(sampling.n):
                ids = self.tok.encode(text + " " * j, add_special_tokens=False) + [self.tok.eos_token_id]
                rows.append(Row(list(p), u, j, ids, [-0.5] * len(ids), False))
        return to_trajectories(rows, self.tok.pad_token_id, self.tok)

    def close(self):
        pass


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from scirl.train.model_loading import resolve_model_path

    t = AutoTokenizer.from_pretrained(str(resolve_model_path("builtin:tiny-qwen3")))
    t.chat_template = Path(TEMPLATE).read_text()
    return t


def _agent(tok):
    return AgentEngine(GroupScripted(tok), tok, resolve_tools(["calculator"]), 3, 400, 100, 5.0, enable_thinking=True)


def _prompts(tok, k):
    return [tok.encode(f"question {i}", add_special_tokens=False) for i in range(k)]


def test_stream_yields_groups_as_they_end_and_generate_keeps_prompt_order(tok):
    sampling = SamplingParams(n=2, max_new_tokens=128)
    uids = [str(i) for i in range(4)]
    chunks = list(_agent(tok).stream(_prompts(tok, 4), uids, sampling))
    assert [c.uid for c in chunks] == [["1", "1", "3", "3"], ["0", "0", "2", "2"]]
    assert [c.extra["tool_rounds"].tolist() for c in chunks] == [[0] * 4, [1] * 4]
    # the last model turn: sample j's own on turn 1; on turn 2 each row continues alone (n=1)
    assert chunks[0].extra["answer_texts"] == [ANSWER + " " * j for j in chunks[0].sample_index]
    assert chunks[1].extra["answer_texts"] == [ANSWER] * 4
    engine = GroupScripted(tok)
    traj, stats = multi_turn_generate(engine, tok, _prompts(tok, 4), uids, sampling, resolve_tools(["calculator"]),
                                      3, 400, 100, 5.0, enable_thinking=True)
    assert engine.calls == [uids, ["0", "0", "2", "2"]]  # turn 2: only the rows that called
    assert traj.uid == ["0", "0", "1", "1", "2", "2", "3", "3"] and traj.sample_index == [0, 1] * 4
    assert [s.num_tool_calls for s in stats] == [1, 1, 0, 0, 1, 1, 0, 0]
    assert traj.extra["num_turns"].tolist() == [2, 2, 1, 1, 2, 2, 1, 1]
    tool_rows = traj.response_mask[0].sum() < traj.extra["response_len"][0]  # a tool turn (mask 0) inside row 0
    assert tool_rows and traj.response_mask[2].sum() == traj.extra["response_len"][2]


def test_overlap_equals_the_sequential_path(tok):
    samples = [Sample(prompt_id=f"q{i}", messages=[], answer=str(i), data_source="t") for i in range(5)]
    from scirl.agent.engine import answer_texts, reward_info

    def items_of(traj):
        return [(samples[int(u)], text, reward_info(traj, i)) for i, (u, text) in enumerate(zip(traj.uid,
                                                                                                  answer_texts(traj)))]

    sampling = SamplingParams(n=3, max_new_tokens=128)
    with RewardPool(REWARD, workers=1, timeout=30) as pool:
        seq, ov = (sample_and_score(_agent(tok), pool, _prompts(tok, 5), [str(i) for i in range(5)], sampling,
                                    items_of, overlap) for overlap in (False, True))
    assert len(ov.spans) == 2 and len(seq.spans) == 1  # two chunks scored on the overlapped path, one batch without
    for key in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "rollout_logprobs", "truncated"):
        assert torch.equal(getattr(ov.traj, key), getattr(seq.traj, key)), key
    assert (ov.traj.uid, ov.traj.sample_index, ov.traj.texts) == (seq.traj.uid, seq.traj.sample_index, seq.traj.texts)
    for key in ("num_turns", "num_tool_calls", "tool_errors", "tool_rounds", "response_len"):
        assert torch.equal(ov.traj.extra[key], seq.traj.extra[key]), key
    assert ov.traj.extra["answer_texts"] == seq.traj.extra["answer_texts"]
    assert [s.num_tool_calls for s in ov.traj.extra["agent_stats"]] == [1] * 3 + [0] * 3 + [1] * 3 + [0] * 3 + [1] * 3
    scores = [r.score for r in ov.results]
    assert scores == [r.score for r in seq.results] == pytest.approx([0.4] * 3 + [0.2] * 3 + [0.4] * 3 + [0.2] * 3
                                                                     + [0.4] * 3)
