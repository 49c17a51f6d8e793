"""The chunked lm_head (scirl.train.logprobs) equals the full-logits path: log-probs, entropy and gradients, with
temperature, padding and the shared-prefix forward; the model's parameters, tying and saved files are unchanged;
the rollout's per-step log-probs equal the ones from generate's stacked logits."""

import copy
import hashlib

import pytest
import torch

from scirl.config import load_config
from scirl.data.prompts import tokenize_prompts
from scirl.data.synthetic import make_problems
from scirl.rollout.base import SamplingParams, Trajectories
from scirl.rollout.hf_engine import HFRolloutEngine, left_pad
from scirl.train.actor import Actor
from scirl.train.logprobs import (
    PassthroughLinear,
    batched_logprobs,
    chunk_tokens,
    chunked_logprobs,
    logprobs_from_logits,
    sequence_logprobs,
    use_chunks,
)


@pytest.fixture()
def model(tiny_model_and_tokenizer):
    return copy.deepcopy(tiny_model_and_tokenizer[0])  # a private copy: these tests swap the head's class


def _batch(seed=0, rows=6, prompt=9, response=11):
    """Left-padded prompts of different lengths (rows 0 and 1 share a prompt: the shared-prefix path has work),
    responses with padding after different lengths, per-token weights that tell every position apart."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 510, (int(n),), generator=gen).tolist() for n in torch.randint(3, prompt + 1, (rows,),
                                                                                            generator=gen)]
    prompts[1] = prompts[0]
    prompt_ids, prompt_mask = left_pad(prompts, 512)
    response_ids = torch.randint(0, 510, (rows, response), generator=gen)
    lengths = torch.randint(1, response + 1, (rows,), generator=gen)
    lengths[0] = response
    mask = (torch.arange(response)[None] < lengths[:, None]).float()
    response_ids = response_ids.masked_fill(mask == 0, 512)
    w_logp, w_ent = torch.randn(rows, response, generator=gen), torch.randn(rows, response, generator=gen)
    return prompt_ids, prompt_mask, response_ids, mask, w_logp, w_ent


def _run(model, batch, chunk_size, shared_prefix, temperature=0.7, with_entropy="grad"):
    prompt_ids, prompt_mask, response_ids, mask, w_logp, w_ent = batch
    model.zero_grad(set_to_none=True)
    logp, entropy = sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, temperature, with_entropy,
                                      shared_prefix=shared_prefix, chunk_size=chunk_size)
    loss = (logp * w_logp * mask).sum() / mask.sum()
    if with_entropy == "grad":
        loss = loss + (entropy * w_ent * mask).sum() / mask.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy.detach(), grads


@pytest.mark.parametrize("shared_prefix", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 65])  # 66 tokens: 66, 17, 10 and 2 chunks; 4, 7, 65 don't divide R
def test_chunked_equals_full_logits_with_gradients(model, shared_prefix, chunk_size):
    batch = _batch()
    assert use_chunks(model, batch[2].numel(), chunk_size) == chunk_size  # the chunked path really runs
    full = _run(model, batch, 0, shared_prefix)
    chunked = _run(model, batch, chunk_size, shared_prefix)
    torch.testing.assert_close(chunked[0], full[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked[1], full[1], rtol=0, atol=1e-5)
    assert full[2].keys() == chunked[2].keys() and "model.embed_tokens.weight" in full[2]  # = lm_head (tied)
    for name, g in full[2].items():
        assert g.abs().max() > 1e-4, name  # every parameter gets a real gradient
        torch.testing.assert_close(chunked[2][name], g, rtol=0, atol=1e-5, msg=name)


def test_a_misaligned_chunk_would_be_caught(model):
    """Shift the targets by one token inside the chunked path only: log-probs move far beyond the tolerance
    (so the equality above tests alignment, not just shapes)."""
    prompt_ids, prompt_mask, response_ids, *_ = batch = _batch()
    full = _run(model, batch, 0, False)[0]
    rolled = response_ids.roll(1, dims=1)
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, prompt_ids, prompt_mask, rolled, 0.7, False, chunk_size=4)
        lp_at_rolled = sequence_logprobs(model, prompt_ids, prompt_mask, rolled, 0.7, False)[0]
    torch.testing.assert_close(lp, lp_at_rolled, rtol=0, atol=1e-5)
    assert (lp - full).abs().max() > 0.5


def test_entropy_as_a_metric_has_no_graph_and_equals_the_full_path(model):
    batch = _batch(seed=3)
    full = _run(model, batch, 0, True, temperature=1.3, with_entropy=True)
    prompt_ids, prompt_mask, response_ids, *_ = batch
    logp, entropy = sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, 1.3, True, chunk_size=5)
    assert logp.requires_grad and not entropy.requires_grad
    torch.testing.assert_close(entropy, full[1], rtol=0, atol=1e-5)
    chunked = _run(model, batch, 5, True, temperature=1.3, with_entropy=True)  # gradients of logp alone
    for name, g in full[2].items():
        torch.testing.assert_close(chunked[2][name], g, rtol=0, atol=1e-5, msg=name)
    _, no_entropy = sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, 1.3, False, chunk_size=5)
    assert no_entropy is None


def test_chunked_function_with_a_bias_and_greedy_temperature_matches_autograd():
    """The pure function on random tensors: a biased head (the tiny model has none), T <= 0 (no scaling),
    gradients wrt hidden, weight and bias against autograd through full logits."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 8, generator=gen, requires_grad=True)
    weight = torch.randn(13, 8, generator=gen, requires_grad=True)
    bias = torch.randn(13, generator=gen, requires_grad=True)
    targets = torch.randint(0, 13, (3, 5), generator=gen)
    w1, w2 = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    results = []
    for temperature in (0.0, 0.6):
        for chunk in (None, 4):
            if chunk is None:
                logp, ent = logprobs_from_logits(torch.nn.functional.linear(hidden, weight, bias), targets,
                                                 temperature, "grad")
            else:
                logp, ent = chunked_logprobs(hidden, weight, bias, targets, temperature, "grad", chunk)
            grads = torch.autograd.grad((logp * w1).sum() + (ent * w2).sum(), (hidden, weight, bias))
            results.append((logp, ent, *grads))
    for full, chunked in ((results[0], results[1]), (results[2], results[3])):
        for a, b in zip(full, chunked):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert (results[0][0] - results[2][0]).abs().max() > 0.1  # the temperature mattered


def test_no_grad_batched_logprobs_chunked_equal_full(model):
    prompt_ids, prompt_mask, response_ids, mask, *_ = _batch(seed=5, rows=8)
    traj = Trajectories(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                        response_mask=mask, rollout_logprobs=torch.zeros_like(mask), uid=list("abcdefgh"),
                        sample_index=[0] * 8, truncated=torch.zeros(8, dtype=torch.bool), texts=[""] * 8, pad_id=512)
    full = batched_logprobs(model, traj, 3, 0.8)
    chunked = batched_logprobs(model, traj, 3, 0.8, chunk_size=6)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)
    assert float((full * mask).abs().sum()) > 10 and bool((chunked[mask == 0] == 0).all())


def test_parameters_tying_and_saved_files_are_unchanged(model, tmp_path):
    def saved(folder):
        model.save_pretrained(folder)
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    before_names = [n for n, _ in model.named_parameters()]
    before_files = saved(tmp_path / "before")
    prompt_ids, prompt_mask, response_ids, *_ = _batch()
    with torch.no_grad():
        logits = model(input_ids=prompt_ids, attention_mask=prompt_mask).logits
        sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, 1.0, False, chunk_size=4)
        after = model(input_ids=prompt_ids, attention_mask=prompt_mask).logits
    head = model.get_output_embeddings()
    assert type(head) is PassthroughLinear and not head.passthrough  # swapped, and off outside the context
    assert after.shape[-1] == 517 and torch.equal(after, logits)  # plain forwards still give logits
    assert head.weight is model.get_input_embeddings().weight  # still tied
    assert [n for n, _ in model.named_parameters()] == before_names
    assert saved(tmp_path / "after") == before_files


def test_auto_chunk_size_depends_on_the_vocabulary(model):
    assert chunk_tokens(model, 0) == 2**27 // 517 and chunk_tokens(model, 64) == 64
    assert use_chunks(model, 64 * 64, 0) == 0  # the tiny model keeps full logits by default
    qwen3_vocab = torch.nn.Linear(8, 151_669, bias=False, device="meta")
    model.lm_head = qwen3_vocab
    assert chunk_tokens(model, 0) == 884 and use_chunks(model, 4 * 4096, 0) == 884


def test_actor_update_chunked_equals_full(tiny_model_and_tokenizer, tmp_path):
    """Actor.update with an entropy bonus (entropy with gradient) and micro-batches: the same gradients either way
    (lr 0 keeps the weights and leaves the last mini-batch's gradients to compare; Adam's first step would turn
    1e-9 differences in near-zero gradients into lr-sized ones)."""
    base, tok = tiny_model_and_tokenizer
    samples, ids, _ = tokenize_prompts(make_problems("train", 3, seed=2), tok, 256, True, "x")
    torch.manual_seed(0)
    traj = HFRolloutEngine(copy.deepcopy(base), tok).generate(ids, ["a", "b", "c"],
                                                               SamplingParams(n=4, temperature=0.9, max_new_tokens=24))
    adv = torch.randn(len(traj), 1).expand_as(traj.response_mask).contiguous()
    grads, metrics = [], []
    for chunk in (0, 7):
        cfg = load_config(None, [f"actor.logprobs_chunk_size={chunk}", "actor.entropy_coeff=0.01", "actor.lr=0",
                                 "rollout.n=4", "rollout.temperature=0.9", "actor.ppo_mini_batch_size=3",
                                 "actor.ppo_micro_batch_size=5", "data.train_batch_size=3"])
        actor = Actor(copy.deepcopy(base), cfg)
        assert use_chunks(actor.model, 5 * traj.response_ids.shape[1], chunk) == chunk
        metrics.append(actor.update(traj, adv))
        grads.append({n: p.grad for n, p in actor.model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-5, msg=name)
    assert grads[0]["model.embed_tokens.weight"].abs().max() > 1e-3
    for key in ("actor/entropy", "actor/pg_loss", "actor/grad_norm"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], abs=1e-5), key
    assert metrics[0]["actor/grad_norm"] > 0.01


def test_rollout_logprobs_equal_generates_stacked_logits(tiny_model_and_tokenizer):
    """The per-step recorder gives what log_softmax(stack(output_logits) / T) gave, without the [B, R, V] stack."""
    model, tok = tiny_model_and_tokenizer
    _, ids, _ = tokenize_prompts(make_problems("val", 4, seed=0), tok, 256, True, "x")
    engine = HFRolloutEngine(model, tok)
    sampling = SamplingParams(n=1, temperature=0.8, top_p=0.9, max_new_tokens=20)
    torch.manual_seed(11)
    traj = engine.generate(ids, list("abcd"), sampling)
    prompt_ids, prompt_mask = left_pad(ids, engine.pad_id)
    torch.manual_seed(11)
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, temperature=0.8, top_p=0.9,
                         top_k=0, max_new_tokens=20, eos_token_id=engine.eos_ids, pad_token_id=engine.pad_id,
                         output_logits=True, return_dict_in_generate=True)
    response = out.sequences[:, prompt_ids.shape[1]:]
    stacked = torch.log_softmax(torch.stack(out.logits, dim=1).float() / 0.8, dim=-1)
    expected = stacked.gather(2, response.unsqueeze(-1)).squeeze(-1) * traj.response_mask
    assert torch.equal(traj.response_ids[traj.response_mask.bool()], response[traj.response_mask.bool()])
    torch.testing.assert_close(traj.rollout_logprobs, expected, rtol=0, atol=1e-6)
    assert not model.get_output_embeddings()._forward_hooks  # the recorder's hook is gone
