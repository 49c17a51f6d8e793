"""Peak memory and time of one micro-batch (forward + backward of the policy loss) at Qwen3's vocabulary:
full [B, R, V] logits vs the chunked lm_head (scirl.train.logprobs), side by side.

    python bench/logprob_memory.py [--rows 4] [--lengths 256,512,4096] [--chunk 0] [--hidden 256] [--layers 2]

The model is Qwen3-shaped with vocab 151,669 and tied embeddings (as Qwen3-4B), random init, small hidden size
and few layers so it runs on a CPU. Each (variant, length) runs in its own fresh process: its memory is that
process's peak RSS (`ru_maxrss`; tracemalloc does not see torch's allocations), printed as the step's own peak
(peak RSS minus the RSS just before the step: model, optimizer-free) and the absolute peak; on CUDA,
torch.cuda.max_memory_allocated. A full-logits run that would not fit in the available memory is skipped (said
so), never started, so the bench cannot push a shared machine into the OOM killer; its memory is then extrapolated
linearly from the lengths that ran (marked). --chunk 0 is the shipped default (auto: 884 tokens at this vocab).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VOCAB = 151_669
PROMPT = 32


def build_model(hidden: int, layers: int, max_len: int, device: str):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                      head_dim=64, max_position_embeddings=max_len, tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).to(device)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_variant(variant: str, rows: int, length: int, chunk: int, hidden: int, layers: int, threads: int,
                device: str) -> dict:
    """One forward + backward in this process; returns its peak memory (MiB) and time (s)."""
    import torch

    from scirl.algos import aggregate_loss, get_policy_loss
    from scirl.train.logprobs import sequence_logprobs

    torch.set_num_threads(threads)
    model = build_model(hidden, layers, PROMPT + length + 1, device)
    gen = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(0, VOCAB, (rows, PROMPT), generator=gen).to(device)
    prompt_mask = torch.ones_like(prompt_ids)
    response_ids = torch.randint(0, VOCAB, (rows, length), generator=gen).to(device)
    mask = torch.ones(rows, length, device=device)
    adv = torch.randn(rows, 1, generator=gen).to(device).expand(rows, length)
    loss_fn = get_policy_loss("vanilla")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mb()
    t0 = time.perf_counter()
    # the full variant: a chunk larger than the micro-batch means one chunk, i.e. full [B, R, V] logits
    full_logits = rows * length + 1
    logp, entropy = sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, 1.0, True,
                                      chunk_size=chunk if variant == "chunked" else full_logits)
    per_token, _ = loss_fn(logp, logp.detach(), adv, mask, 0.2, 0.28, 3.0)
    aggregate_loss(per_token, mask, mode="token-mean").backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    seconds = time.perf_counter() - t0
    return {"variant": variant, "length": length, "step_peak_mb": peak - base, "peak_mb": peak, "seconds": seconds,
            "entropy": float(entropy.mean())}


def available_mb(device: str) -> float:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free / 2**20
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--lengths", default="256,512,4096", help="comma-separated response lengths")
    ap.add_argument("--chunk", type=int, default=0, help="actor.logprobs_chunk_size of the chunked variant (0: auto)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default="full,chunked")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        variant, length = a.child.split(":")
        print(json.dumps(run_variant(variant, a.rows, int(length), a.chunk, a.hidden, a.layers, a.threads,
                                     a.device)))
        return
    print(f"Qwen3-shaped, vocab {VOCAB:,}, hidden {a.hidden}, {a.layers} layers, tied embeddings; "
          f"{a.rows} rows x (prompt {PROMPT} + response); actor.logprobs_chunk_size={a.chunk}; {a.device}")
    results = {}
    for length in [int(x) for x in a.lengths.split(",")]:
        for variant in a.variants.split(","):
            # the full path peaks at ~5 fp32 [rows, length, vocab] tensors (measured); never start what cannot fit
            need = 5.5 * a.rows * (length + 1) * VOCAB * 4 / 2**20 if variant == "full" else 0
            if need > 0.8 * available_mb(a.device):
                print(f"  {variant:>7} R={length}: skipped, needs ~{need / 1024:.1f} GiB, "
                      f"{available_mb(a.device) / 1024:.1f} GiB available")
                continue
            cmd = [sys.executable, __file__, "--child", f"{variant}:{length}"] + [
                f"--{k}={v}" for k, v in (("rows", a.rows), ("chunk", a.chunk), ("hidden", a.hidden),
                                          ("layers", a.layers), ("threads", a.threads), ("device", a.device))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[variant, length] = r
            print(f"  {variant:>7} R={length}: step peak {r['step_peak_mb']:8.0f} MiB  (process peak "
                  f"{r['peak_mb']:8.0f} MiB)  {r['seconds']:6.1f} s", flush=True)
    print(f"\n{'rows x length':>14} | {'full MiB':>9} | {'chunked MiB':>11} | {'ratio':>6} | {'full s':>7} | "
          f"{'chunked s':>9}")
    measured = sorted((length, r["step_peak_mb"]) for (v, length), r in results.items() if v == "full")
    note = False
    for length in [int(x) for x in a.lengths.split(",")]:
        full, chunked = results.get(("full", length)), results.get(("chunked", length))
        cell = lambda r, k, f: format(r[k], f) if r and r.get(k) is not None else "-"  # noqa: E731
        if full is None and len(measured) >= 2:  # skipped: the full path's memory is linear in the tokens
            (x0, y0), (x1, y1) = measured[0], measured[-1]
            full = {"step_peak_mb": y0 + (y1 - y0) * (length - x0) / (x1 - x0), "seconds": None}
            note = True
        ratio = f"{full['step_peak_mb'] / chunked['step_peak_mb']:.1f}x" if full and chunked else "-"
        full_mb = cell(full, "step_peak_mb", ".0f") if not full or full["seconds"] is not None else \
            "~" + cell(full, "step_peak_mb", ".0f")
        print(f"{a.rows:>5} x {length:<6} | {full_mb:>9} | "
              f"{cell(chunked, 'step_peak_mb', '11.0f'):>11} | {ratio:>6} | {cell(full, 'seconds', '7.1f'):>7} | "
              f"{cell(chunked, 'seconds', '9.1f'):>9}")
    if note:
        print(f"~: not run (it would not fit), extrapolated linearly from the measured "
              f"R={measured[0][0]} and R={measured[-1][0]}")


if __name__ == "__main__":
    main()
