"""Scoring overlapped with generation (rewards/overlap.py): a fake engine whose stream yields prompt groups out of
order with delays; the rows and scores equal the sequential path's, chunk 1 is scored before chunk 2 arrives
(timestamps), failures on either side stop both, and the hf engine's stream is generate's batch, call by call."""

import time
from pathlib import Path

import pytest
import torch

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards import RewardPool
from scirl.rewards.overlap import canonical_order, sample_and_score
from scirl.rollout.base import SamplingParams, Trajectories

SLOW = f"{Path(__file__).parent / 'helpers' / 'slow_reward.py'}:score"
N = 3  # samples per prompt


def _group(i: int, uid: str, n: int, sample_order=None) -> Trajectories:
    """Prompt i's n rows: prompt and response widths differ between prompts (the concatenation re-pads them)."""
    order = list(range(n)) if sample_order is None else sample_order
    p, r = 2 + i, 3 + (i % 4)
    resp = torch.tensor([[100 * i + 10 * j + k for k in range(r)] for j in order])
    return Trajectories(
        prompt_ids=torch.full((n, p), 7 + i), prompt_mask=torch.ones(n, p, dtype=torch.long),
        response_ids=resp,
        response_mask=torch.ones(n, r), rollout_logprobs=-(resp.float() + 0.5) / 1000, uid=[uid] * n, sample_index=order,
        truncated=torch.tensor([j % 2 == 0 for j in order]),
        texts=["boom" if (i, j) == (2, 1) else f"prompt {i} sample {j} " * (j + 1) for j in order])


class FakeStreamEngine:
    """generate: the canonical rows. stream: `chunks` (lists of prompt indices) in that order, each after `delay`
    seconds of 'generation', the samples of the first group of each chunk reversed; arrival times are recorded."""

    shares_module = True

    def __init__(self, chunks, delay=0.0, fail_after=None):
        self.chunks, self.delay, self.fail_after = chunks, delay, fail_after
        self.arrivals: list[float] = []

    def _rows_of(self, i, uid, n, reverse=False):
        return _group(i, uid, n, list(range(n))[::-1] if reverse else None)

    def generate(self, prompts, uids, sampling):
        time.sleep(self.delay * len(self.chunks))
        return Trajectories.concat([self._rows_of(i, u, sampling.n) for i, u in enumerate(uids)])

    def stream(self, prompts, uids, sampling):
        for c, chunk in enumerate(self.chunks):
            time.sleep(self.delay)
            if self.fail_after is not None and c == self.fail_after:
                raise RuntimeError("engine died")
            parts = [self._rows_of(i, uids[i], sampling.n, reverse=k == 0) for k, i in enumerate(chunk)]
            self.arrivals.append(time.perf_counter())
            yield Trajectories.concat(parts)


def _samples(k):
    return [Sample(prompt_id=f"q{i}", messages=[], answer=str(i), data_source="t") for i in range(k)]


def _items_of(samples):
    return lambda traj: [(samples[int(u)], text, {}) for u, text in zip(traj.uid, traj.texts)]


def _run(engine, pool, k, overlap):
    samples = _samples(k)
    return sample_and_score(engine, pool, [[1]] * k, [str(i) for i in range(k)], SamplingParams(n=N),
                            _items_of(samples), overlap)


def _assert_same_traj(a: Trajectories, b: Trajectories):
    for key in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "rollout_logprobs", "truncated"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert (a.uid, a.sample_index, a.texts) == (b.uid, b.sample_index, b.texts)


def test_out_of_order_chunks_give_the_sequential_rows_and_scores_and_overlap(monkeypatch):
    monkeypatch.setenv("SCIRL_TEST_REWARD_SECONDS", "0.05")
    chunks = [[3], [0, 2], [4, 1]]  # 5 prompts x 3 samples, groups out of order
    with RewardPool(SLOW, workers=2, timeout=30) as pool:
        seq = _run(FakeStreamEngine(chunks, delay=0.4), pool, 5, overlap=False)
        engine = FakeStreamEngine(chunks, delay=0.4)
        ov = _run(engine, pool, 5, overlap=True)
    _assert_same_traj(ov.traj, seq.traj)
    assert ov.traj.uid == [str(i) for i in range(5) for _ in range(N)] and ov.traj.sample_index == [0, 1, 2] * 5
    assert [r.score for r in ov.results] == [r.score for r in seq.results]
    assert [r.components for r in ov.results] == [r.components for r in seq.results]
    assert ov.stats == seq.stats == {"timeouts": 0, "errors": 1}  # prompt 2 sample 1 raised, in both
    assert ov.results[2 * N + 1].components == {"error": 1.0}
    assert len({r.score for r in ov.results}) > 2  # real, varied scores
    # chunk 1 (prompt 3) is scored while the engine is still generating chunk 2: timestamps, not sleeps
    (_, start1, end1), (arrived2, *_) = ov.spans[0], ov.spans[1]
    assert engine.arrivals[0] <= start1 < engine.arrivals[1] <= arrived2
    assert end1 < engine.arrivals[1]  # 3 calls of 50 ms on 2 workers vs 400 ms of generation
    # the first two chunks' scoring (6 + 6 calls of 50 ms on 2 workers) was hidden; only the last one's was not
    t = ov.timing
    assert t["reward_overlapped"] >= 0.2 and t["reward"] < 0.5 * (t["reward"] + t["reward_overlapped"])
    assert seq.timing["reward_overlapped"] == 0.0 and seq.timing["reward"] >= 0.3  # 15 calls x 50 ms / 2 workers
    assert t["generate"] >= 3 * 0.4
    print(f"\noverlap timing {t}\nsequential timing {seq.timing}")


def test_a_failing_engine_cancels_the_scoring_in_progress_and_the_pool_works_after(monkeypatch):
    monkeypatch.setenv("SCIRL_TEST_REWARD_SECONDS", "30")  # a reward call that would block for 30 s
    with RewardPool(SLOW, workers=1, timeout=60) as pool:
        pids = pool.worker_pids
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match="engine died"):
            _run(FakeStreamEngine([[0], [1]], delay=0.5, fail_after=1), pool, 2, overlap=True)
        assert time.perf_counter() - t0 < 10  # not 30 s: chunk 1's call, 0.5 s in, was cancelled
        assert pool.worker_pids != pids and len(pool.worker_pids) == 1
        monkeypatch.setenv("SCIRL_TEST_REWARD_SECONDS", "0")  # the next worker reads it when forked
        pool._replace(0)
        results, stats = pool.score([(_samples(1)[0], "abc", {})])  # re-armed: scores again
        assert stats == {"timeouts": 0, "errors": 0} and results[0].score == pytest.approx(sum(map(ord, "abc")) % 7 / 7)


def test_a_failing_scorer_is_raised_after_the_stream():
    class BrokenPool:
        def score(self, items):
            raise ValueError("pool broke")

    with pytest.raises(ValueError, match="pool broke"):
        _run(FakeStreamEngine([[0], [1]]), BrokenPool(), 2, overlap=True)


@pytest.mark.parametrize("chunks, what", [([[0], [0, 1]], "('0', 0)"), ([[0]], "('1', 0)")])
def test_a_stream_that_repeats_or_misses_a_group_is_refused(chunks, what):
    with RewardPool(SLOW, workers=0) as pool, pytest.raises(ScirlError, match="each prompt group must come") as e:
        _run(FakeStreamEngine(chunks), pool, 2, overlap=True)
    assert what in str(e.value)


def test_canonical_order_sorts_by_prompt_then_sample():
    a, b = _group(0, "x", 2, [1, 0]), _group(1, "y", 2)
    assert canonical_order([b, a], ["x", "y"], 2) == [3, 2, 0, 1]


def test_an_engine_without_stream_scores_after_generate():
    class GenerateOnly:
        def generate(self, prompts, uids, sampling):
            return Trajectories.concat([_group(i, u, sampling.n) for i, u in enumerate(uids)])

    with RewardPool(SLOW, workers=0) as pool:
        out = _run(GenerateOnly(), pool, 2, overlap=True)
    assert out.traj.uid == ["0"] * N + ["1"] * N and out.timing["reward_overlapped"] == 0.0


def test_hf_stream_is_generate_call_by_call(tiny_model_and_tokenizer):
    from scirl.data.prompts import tokenize_prompts
    from scirl.data.synthetic import make_problems
    from scirl.rollout.hf_engine import HFRolloutEngine

    model, tok = tiny_model_and_tokenizer
    _, ids, _ = tokenize_prompts(make_problems("val", 3, seed=0), tok, 256, True, "data.val")
    sampling = SamplingParams(n=4, max_new_tokens=24)
    engine = HFRolloutEngine(model, tok, max_batch_size=6)  # calls of 6 + 6 rows: prompt "b" spans both
    torch.manual_seed(0)
    whole = engine.generate(ids, list("abc"), sampling)
    torch.manual_seed(0)
    chunks = list(engine.stream(ids, list("abc"), sampling))
    assert [c.uid for c in chunks] == [["a"] * 4, ["b"] * 4 + ["c"] * 4]
    _assert_same_traj(Trajectories.concat(chunks), whole)
    assert whole.response_mask.sum() > 24  # real samples, not all empty
    torch.manual_seed(0)
    assert len(list(HFRolloutEngine(model, tok).stream(ids, list("abc"), sampling))) == 1  # the default: one call
