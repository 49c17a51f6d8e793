"""rollout.engine=openai against a real `scirl serve` subprocess on the bundled tiny model (127.0.0.1, a free port):
token ids and log-probs come back exactly, the server's log-probs equal the trainer's recompute, n samples,
truncation at max_new_tokens, EOS in the response, weights pushed through /update_weights, a read-only server."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from scirl.config import load_config
from scirl.errors import ScirlError
from scirl.rollout.base import SamplingParams
from scirl.rollout.openai_engine import OpenAIRolloutEngine
from scirl.train.logprobs import batched_logprobs
from test_serve import running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve")) as srv:
        yield srv


def engine_cfg(url: str, tmp_path, **extra):
    overrides = {"rollout.engine": "openai", "rollout.base_url": url + "/v1", "rollout.request_timeout": 60,
                 "rollout.max_concurrency": 4, "trainer.output_dir": str(tmp_path), "trainer.run_name": "t", **extra}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture()
def engine(server, tmp_path, tiny_model_and_tokenizer):
    eng = OpenAIRolloutEngine.from_config(engine_cfg(server.url, tmp_path), tiny_model_and_tokenizer[1])
    yield eng
    eng.close()


def chat_prompt(tokenizer, text: str) -> list[int]:
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, enable_thinking=False)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_samples_token_ids_and_logprobs_match_the_trainer(engine, tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    assert engine.model_name == "builtin:tiny-qwen3" and engine.takes_weights and not engine.shares_module
    prompts = [chat_prompt(tok, q) for q in ("What is 2+2?", "hi", "Compute 7*6.")]
    sampling = SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=24)
    traj = engine.generate(prompts, ["a", "b", "c"], sampling)
    assert len(traj) == 12 and traj.uid == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert traj.sample_index == [0, 1, 2, 3] * 3
    for i, p in enumerate(prompts):  # left-padded prompts, exactly the ids sent
        for j in range(4):
            row = 4 * i + j
            assert traj.prompt_ids[row][traj.prompt_mask[row].bool()].tolist() == p
    lengths = traj.response_mask.sum(1).long()
    assert (lengths >= 1).all() and (lengths <= 24).all()
    for row in range(len(traj)):  # padding is pad_id with zero log-prob, real tokens have a log-prob < 0
        n = int(lengths[row])
        assert (traj.response_ids[row, n:] == traj.pad_id).all() and (traj.rollout_logprobs[row, n:] == 0).all()
        assert (traj.rollout_logprobs[row, :n] <= 0).all()
        assert traj.texts[row] == tok.decode(traj.response_ids[row, :n].tolist(), skip_special_tokens=True)
    ours = batched_logprobs(model, traj, 16, 1.0)
    diff = (ours - traj.rollout_logprobs).abs() * traj.response_mask
    print(f"server vs trainer log-probs at T=1: mean {diff.sum() / traj.response_mask.sum():.2e} max {diff.max():.2e}")
    assert diff.max() < 1e-4
    # at another temperature too (the server applies it before recording, as the trainer does)
    traj = engine.generate(prompts[:1], ["a"], SamplingParams(n=2, temperature=0.7, max_new_tokens=16))
    assert ((batched_logprobs(model, traj, 16, 0.7) - traj.rollout_logprobs).abs() * traj.response_mask).max() < 1e-4


def test_stream_yields_whole_groups_and_equals_generate(engine, tiny_model_and_tokenizer):
    tok = tiny_model_and_tokenizer[1]
    prompts = [chat_prompt(tok, q) for q in ("a", "bb", "ccc", "dddd", "e")]
    sampling = SamplingParams(n=3, temperature=0.0, max_new_tokens=12)  # greedy: the same rows either way
    chunks = list(engine.stream(prompts, list("vwxyz"), sampling))
    assert len(chunks) == 5 and all(len(c) == 3 and len(set(c.uid)) == 1 for c in chunks)
    full = engine.generate(prompts, list("vwxyz"), sampling)
    by_uid = {c.uid[0]: c for c in chunks}
    for i, uid in enumerate("vwxyz"):
        rows = full.select(list(range(3 * i, 3 * i + 3)))
        n = int(rows.response_mask.sum(1).max())
        assert torch.equal(by_uid[uid].response_ids[:, :n], rows.response_ids[:, :n])
        assert torch.allclose(by_uid[uid].rollout_logprobs[:, :n], rows.rollout_logprobs[:, :n])


def test_eos_is_in_the_response_and_length_is_truncation(engine, tiny_model_and_tokenizer):
    tok = tiny_model_and_tokenizer[1]
    prompt = chat_prompt(tok, "hi")
    done = engine.generate([prompt], ["p"], SamplingParams(n=2, temperature=0.0, max_new_tokens=60))
    n = int(done.response_mask[0].sum())
    assert n < 60 and not done.truncated.any()  # the trained tiny model stops by itself
    assert done.response_ids[0, n - 1].item() in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))
    assert done.rollout_logprobs[0, n - 1] < 0  # the EOS is trained on: it has a log-prob and a mask of 1
    cut = engine.generate([prompt], ["p"], SamplingParams(n=2, temperature=0.0, max_new_tokens=3))
    assert cut.truncated.all() and cut.response_mask.sum(1).tolist() == [3.0, 3.0]
    assert cut.response_ids[0].tolist() == done.response_ids[0, :3].tolist()


def test_sequence_logprobs_echo_matches_the_trainer_at_temperature(engine, tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    ids = chat_prompt(tok, "What is 2+2?") + tok.encode(" The answer is \\boxed{4}.", add_special_tokens=False)
    plen = len(ids) - 10
    for temperature in (1.0, 0.6):
        server = engine.sequence_logprobs(ids, plen, temperature)
        t = torch.tensor([ids])
        from scirl.train.logprobs import sequence_logprobs

        with torch.no_grad():
            ours, _ = sequence_logprobs(model, t[:, :plen], torch.ones_like(t[:, :plen]), t[:, plen:], temperature,
                                        with_entropy=False)
        assert server.shape == (10,) and (server - ours[0]).abs().max() < 1e-4, temperature


def test_update_weights_loads_the_pushed_tensors(server, engine, tiny_model_and_tokenizer, tmp_path):
    model, tok = tiny_model_and_tokenizer
    ids = chat_prompt(tok, "hi") + tok.encode(" fine", add_special_tokens=False)
    plen = len(ids) - 2
    before = engine.sequence_logprobs(ids, plen, 1.0)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    try:
        t0 = time.perf_counter()
        engine.update_weights({k: v.detach() for k, v in moved.state_dict().items()})  # tied weights included
        print(f"push of the tiny model: {time.perf_counter() - t0:.3f} s")
        after = engine.sequence_logprobs(ids, plen, 1.0)
        t = torch.tensor([ids])
        with torch.no_grad():
            from scirl.train.logprobs import sequence_logprobs

            want, _ = sequence_logprobs(moved, t[:, :plen], torch.ones_like(t[:, :plen]), t[:, plen:], 1.0, False)
        assert (after - before).abs().max() > 1e-3 and (after - want[0]).abs().max() < 1e-4
        assert list(tmp_path.glob("t/.weights-push-*/*.safetensors")) == []  # the file is gone once loaded
        # a state dict that does not fit: the server refuses it with a clear message and keeps its weights
        with pytest.raises(ScirlError, match=r"update_weights .*HTTP 400: update_weights: .* does not match the "
                                             r"served model: missing 1 \['model.norm.weight'\]") as e:
            engine.update_weights({k: v for k, v in moved.state_dict().items() if k != "model.norm.weight"})
        assert server.url in str(e.value) and "\n" not in str(e.value)
        assert (engine.sequence_logprobs(ids, plen, 1.0) - after).abs().max() == 0
    finally:
        engine.update_weights({k: v.detach() for k, v in model.state_dict().items()})
    assert (engine.sequence_logprobs(ids, plen, 1.0) - before).abs().max() < 1e-6
    engine.close()
    assert list(tmp_path.glob("t/.weights-push-*")) == []


def test_read_only_server_samples_but_refuses_training(tmp_path, tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    with running_server(tmp_path, "--read-only") as srv:
        cfg = engine_cfg(srv.url, tmp_path)
        with pytest.raises(ScirlError, match="is read-only .*training needs a server that takes the trained weights"):
            OpenAIRolloutEngine.from_config(cfg, tok)
        eng = OpenAIRolloutEngine.from_config(cfg, tok, require_weights=False)  # evaluation
        traj = eng.generate([chat_prompt(tok, "hi")], ["p"], SamplingParams(n=2, max_new_tokens=4))
        assert len(traj) == 2
        eng.takes_weights = True  # pretend /health had said otherwise: the push itself is refused (403)
        with pytest.raises(ScirlError, match=r"is read-only \(POST .*/update_weights: HTTP 403\)"):
            eng.update_weights({k: v.detach() for k, v in model.state_dict().items()})
        with pytest.raises(ScirlError, match="is read-only: it cannot take the trainer's weights"):
            eng.update_weights({})
        eng.update_weights(None)  # nothing to push is not an error
        eng.close()


def test_the_trainer_seed_makes_server_rollouts_repeat(engine, tiny_model_and_tokenizer):
    tok = tiny_model_and_tokenizer[1]
    prompts = [chat_prompt(tok, q) for q in ("a", "bb", "ccc")]
    sampling = SamplingParams(n=3, temperature=1.0, max_new_tokens=12)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)  # each request's seed is drawn from the trainer's RNG
        runs.append(engine.generate(prompts, ["x", "y", "z"], sampling).response_ids)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
