"""Rollout under FSDP: a full-weight rollout copy per rank synced after each optimizer step (scirl's design:
`engine.update_weights(actor.rollout_weights())`) vs generating directly on the FSDP-sharded module (which
all-gathers every layer for every generated token). 2 gloo processes on CPU.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/rollout_sync.py [--model tiny|25m] [--tokens 32] [--batch 8]

Prints, per design, the median over repeats of the slowest rank's seconds: sync (gather + load) and generate.
Both designs generate exactly --tokens tokens per row (min_new_tokens), so the sharded module's ranks stay in step.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp


def _model(kind: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    from scirl.train.model_loading import load_model_and_tokenizer, resolve_model_path

    if kind == "tiny":
        return load_model_and_tokenizer("builtin:tiny-qwen3")[0]
    cfg = AutoConfig.from_pretrained(resolve_model_path("builtin:tiny-qwen3"))  # Qwen3-shaped, ~25M parameters
    cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 512, 1536, 8
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size = 8, 4, 64, 8192
    cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


def _generate(model, prompts, tokens: int):
    with torch.no_grad():
        model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                       max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)


def _worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from scirl import dist
    from scirl.config import FsdpConfig
    from scirl.rollout.hf_engine import HFRolloutEngine
    from scirl.train.fsdp import full_state_dict, reshard, shard_model

    dist.init_from_env()
    model = _model(args.model).eval()
    rollout = copy.deepcopy(model)
    shard_model(model, FsdpConfig(), "cpu")
    engine = HFRolloutEngine.__new__(HFRolloutEngine)  # only its weight sync is measured here
    engine.model, engine.shares_module = rollout, False
    g = torch.Generator().manual_seed(rank)
    prompts = torch.randint(5, model.config.vocab_size, (args.batch, 16), generator=g)
    rows = []
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        engine.update_weights(full_state_dict(model))  # the weight-sync point
        t1 = time.perf_counter()
        _generate(rollout, prompts, args.tokens)
        t2 = time.perf_counter()
        dist.barrier()
        t3 = time.perf_counter()
        _generate(model, prompts, args.tokens)  # naive: on the sharded module
        reshard(model)
        t4 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t4 - t3))
    slowest = [tuple(max(v) for v in zip(*rs)) for rs in zip(*dist.all_gather_object(rows))]
    if rank == 0:
        queue.put(slowest)
    dist.destroy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", choices=["tiny", "25m"])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(2, port, args, queue), nprocs=2, join=True, start_method="spawn")
    rows = queue.get()
    sync, gen_copy, gen_sharded = (statistics.median(r[i] for r in rows) for i in range(3))
    print(f"model {args.model}, 2 gloo ranks, batch {args.batch} x {args.tokens} new tokens (median of "
          f"{args.repeats}, slowest rank):")
    print(f"  rollout copy : sync {sync:.3f} s + generate {gen_copy:.3f} s = {sync + gen_copy:.3f} s")
    print(f"  sharded (naive): generate {gen_sharded:.3f} s  ({gen_sharded / (sync + gen_copy):.1f}x the copy)")


if __name__ == "__main__":
    main()
