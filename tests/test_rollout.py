"""The hf rollout engine: n samples per prompt, masks up to EOS, truncation, rollout log-probs = trainer log-probs."""

import torch

from scirl.data.prompts import tokenize_prompts
from scirl.data.synthetic import make_problems
from scirl.rollout.base import SamplingParams
from scirl.rollout.hf_engine import HFRolloutEngine
from scirl.train.logprobs import sequence_logprobs


def _prompts(tokenizer, n):
    samples = make_problems("val", n, seed=0)
    return tokenize_prompts(samples, tokenizer, 256, True, "data.val")


def test_generate_shapes_masks_and_logprobs(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    samples, ids, _ = _prompts(tok, 3)
    engine = HFRolloutEngine(model, tok)
    torch.manual_seed(0)
    traj = engine.generate(ids, ["a", "b", "c"], SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=48))
    assert len(traj) == 12 and traj.uid == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert traj.sample_index == [0, 1, 2, 3] * 3
    # prompts are left-padded: the last prompt column is always a real token
    assert bool(traj.prompt_mask[:, -1].all())
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for row in range(len(traj)):
        length = int(traj.response_mask[row].sum())
        ids_row = traj.response_ids[row]
        assert bool(traj.response_mask[row, :length].all()) and not bool(traj.response_mask[row, length:].any())
        if not bool(traj.truncated[row]):
            assert int(ids_row[length - 1]) == eos  # the EOS token is part of the trained response
            assert eos not in ids_row[: length - 1].tolist()
    assert traj.truncated.float().mean() < 0.5  # the tiny model mostly stops on its own
    assert all(isinstance(t, str) for t in traj.texts) and "<|im_end|>" not in traj.texts[0]
    # rollout log-probs equal what the trainer recomputes with the same weights (token in, token out)
    model.eval()
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, traj.prompt_ids, traj.prompt_mask, traj.response_ids, 1.0, False)
    diff = ((lp - traj.rollout_logprobs).abs() * traj.response_mask).max()
    assert float(diff) < 1e-4, float(diff)
    assert float((traj.rollout_logprobs * traj.response_mask).sum()) < 0


def test_truncation_flag_and_temperature(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    _, ids, _ = _prompts(tok, 2)
    engine = HFRolloutEngine(model, tok)
    torch.manual_seed(0)
    traj = engine.generate(ids, ["a", "b"], SamplingParams(n=2, temperature=0.7, max_new_tokens=3))
    assert bool(traj.truncated.all()) and traj.response_mask.sum(-1).tolist() == [3.0] * 4
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, traj.prompt_ids, traj.prompt_mask, traj.response_ids, 0.7, False)
    assert torch.allclose(lp, traj.rollout_logprobs, atol=1e-4)


def test_chunked_generation_concatenates(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    _, ids, _ = _prompts(tok, 3)
    engine = HFRolloutEngine(model, tok, max_batch_size=5)
    traj = engine.generate(ids, ["a", "b", "c"], SamplingParams(n=3, max_new_tokens=16))
    assert len(traj) == 9 and traj.prompt_ids.shape[0] == 9 and len(traj.texts) == 9
    assert traj.response_mask.shape == traj.rollout_logprobs.shape == traj.response_ids.shape


def test_shared_prompt_prefill_gives_identical_samples(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    _, ids, _ = _prompts(tok, 3)
    engine = HFRolloutEngine(model, tok)
    sampling = SamplingParams(n=4, max_new_tokens=32)
    torch.manual_seed(5)
    shared = engine.generate(ids, ["a", "b", "c"], sampling)
    engine._shared_prompt_cache = lambda *a: None  # the plain path: every row prefills its own prompt
    torch.manual_seed(5)
    plain = engine.generate(ids, ["a", "b", "c"], sampling)
    assert torch.equal(shared.response_ids, plain.response_ids)
    assert torch.allclose(shared.rollout_logprobs, plain.rollout_logprobs, atol=1e-5)


def test_shared_prefix_training_forward_matches_plain_forward(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    _, ids, _ = _prompts(tok, 3)
    torch.manual_seed(1)
    traj = HFRolloutEngine(model, tok).generate(ids, ["a", "b", "c"], SamplingParams(n=4, max_new_tokens=32))
    results = []
    for shared in (True, False):
        model.zero_grad()
        lp, ent = sequence_logprobs(model, traj.prompt_ids, traj.prompt_mask, traj.response_ids, 1.0, "grad",
                                    shared_prefix=shared)
        ((lp * traj.response_mask).sum() + 0.1 * (ent * traj.response_mask).sum()).backward()
        results.append((lp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    model.zero_grad()
    mask = traj.response_mask.bool()
    assert torch.allclose(results[0][0][mask], results[1][0][mask], atol=1e-5)
    assert results[1][1].abs().max() > 1.0
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4, rtol=1e-4)
