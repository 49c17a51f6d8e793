"""Padding-free packing (scirl.sft.packing): the packed row's loss and gradients equal the per-conversation
unpacked ones and the padded batch's (sdpa and eager attention), positions restart per conversation, and the
greedy micro-batch grouping respects the token budget; the chunked lm_head path gives the same loss."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from scirl.sft.data import Conversation
from scirl.sft.packing import IGNORE, labels_of, micro_batches, packed_batch, padded_batch, token_loss_sum
from scirl.train.model_loading import resolve_model_path


def _convs() -> list[Conversation]:
    rng = random.Random(0)
    out = []
    for n in (7, 40, 12, 25):
        mask = [0] * (n // 3) + [1] * (n - n // 3 - 3) + [0, 1, 1]  # two labelled runs, as two assistant turns
        out.append(Conversation([rng.randrange(500) for _ in range(n)], mask))
    return out


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:tiny-qwen3"), dtype=torch.float32,
                                                attn_implementation=request.param)


def _grads(model, batches) -> tuple[float, int, list[torch.Tensor]]:
    model.zero_grad()
    total, count = 0.0, 0
    for b in batches:
        loss, n = token_loss_sum(model, b)
        loss.backward()
        total, count = total + float(loss.detach()), count + n
    return total, count, [p.grad.clone() for p in model.parameters()]


def test_packed_equals_unpacked_and_padded(model):
    convs = _convs()
    packed = packed_batch(convs)
    assert packed.attention_mask is None and packed.input_ids.shape == (1, sum(len(c) for c in convs))
    assert packed.position_ids[0].tolist() == [p for c in convs for p in range(len(c))]
    loss_p, n_p, g_p = _grads(model, [packed])
    loss_u, n_u, g_u = _grads(model, [packed_batch([c]) for c in convs])
    loss_d, n_d, g_d = _grads(model, [padded_batch(convs, pad_id=0)])
    assert n_p == n_u == n_d == sum(sum(c.mask[1:]) for c in convs) == 53
    assert abs(loss_p / n_p - loss_u / n_u) < 1e-5 and abs(loss_d / n_d - loss_u / n_u) < 1e-5
    for a, b, c in zip(g_p, g_u, g_d):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c, b, atol=1e-5, rtol=1e-4)
    # without restarting positions (one long causal sequence) the loss differs: the mask matters
    wrong = packed_batch(convs)
    wrong.position_ids = torch.arange(wrong.input_ids.shape[1])[None]
    assert abs(float(token_loss_sum(model, wrong)[0]) / n_p - loss_u / n_u) > 1e-3


def test_packed_logits_equal_each_conversation_alone(model):
    convs = _convs()
    with torch.no_grad():
        b = packed_batch(convs)
        packed = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([c.ids])).logits[0] for c in convs])
    assert (packed - alone).abs().max() < 1e-5


def test_chunked_head_gives_the_same_loss(model):
    convs = _convs()
    full, n = token_loss_sum(model, packed_batch(convs))
    chunked, m = token_loss_sum(model, packed_batch(convs), chunk_size=5)
    assert n == m and abs(float(full) - float(chunked)) < 1e-4


def test_labels_are_next_tokens_where_the_mask_is_one():
    c = Conversation([10, 11, 12, 13, 14], [0, 0, 1, 1, 0])
    assert labels_of(c) == [IGNORE, 12, 13, IGNORE, IGNORE]


def test_micro_batches_fill_up_to_the_budget():
    assert micro_batches([5, 5, 5, 9, 1, 10], 10) == [[0, 1], [2], [3, 4], [5]]
    assert micro_batches([3], 3) == [[0]]
    assert micro_batches([], 8) == []
