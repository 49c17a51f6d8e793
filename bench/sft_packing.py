"""SFT throughput, padding-free packing vs padded rows, side by side on the same conversations, the same
micro-batches and the same model: one optimizer step's forward + backward over a batch of conversations whose
lengths vary as real multi-turn data does (uniform in [--min-len, --max-len] tokens, half labelled).

    PYTHONPATH=src python bench/sft_packing.py [--model tiny|25m] [--attn sdpa|eager] [--convs 32] [--budget 2048]

Prints, per mode, the best seconds per step over the repeats (the modes interleaved), the real (non-padding)
tokens per second, and the share of the forward's positions that are padding. Both modes compute the same loss (tests/test_sft_packing.py)."""

from __future__ import annotations

import argparse
import random
import time

import torch

from scirl.sft.data import Conversation
from scirl.sft.packing import make_batch, micro_batches, token_loss_sum


def _model(kind: str, attn: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    from scirl.train.model_loading import load_model_and_tokenizer, resolve_model_path

    if kind == "tiny":
        return load_model_and_tokenizer("builtin:tiny-qwen3", attn=attn)[0]
    config = AutoConfig.from_pretrained(resolve_model_path("builtin:tiny-qwen3"))  # ~25M parameters, same vocab
    config.update(dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=64, max_position_embeddings=4096,
                       layer_types=["full_attention"] * 6))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny", choices=("tiny", "25m"))
    p.add_argument("--convs", type=int, default=32)
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=250)
    p.add_argument("--budget", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    a = p.parse_args()
    rng = random.Random(0)
    convs = []
    for _ in range(a.convs):
        n = rng.randint(a.min_len, a.max_len)
        convs.append(Conversation([rng.randrange(3, 500) for _ in range(n)], [0] * (n // 2) + [1] * (n - n // 2)))
    model = _model(a.model, a.attn).train()
    groups = [[convs[i] for i in g] for g in micro_batches([len(c) for c in convs], a.budget)]
    real = sum(len(c) for c in convs)
    print(f"{a.model} model ({a.attn}), {a.convs} conversations of {a.min_len}-{a.max_len} tokens ({real} tokens), "
          f"{len(groups)} micro-batches of <= {a.budget} tokens, {torch.get_num_threads()} threads")
    times: dict[bool, list[float]] = {True: [], False: []}
    positions: dict[bool, int] = {}
    for r in range(a.repeats + 1):  # the modes interleaved, so that load from other processes hits both alike
        for packing in (True, False):
            t0 = time.perf_counter()
            positions[packing] = 0
            for g in groups:
                batch = make_batch(g, packing, 0)
                positions[packing] += batch.input_ids.numel()
                loss, _ = token_loss_sum(model, batch)
                loss.backward()
            model.zero_grad(set_to_none=True)
            if r:  # the first round is a warm-up
                times[packing].append(time.perf_counter() - t0)
    for packing in (True, False):
        s = min(times[packing])  # the least disturbed repeat
        print(f"{'packed' if packing else 'padded'}: {s:.3f} s/step (best of {a.repeats}), {real / s:,.0f} tokens/s, "
              f"padding {1 - real / positions[packing]:.0%} of {positions[packing]} positions")


if __name__ == "__main__":
    main()
