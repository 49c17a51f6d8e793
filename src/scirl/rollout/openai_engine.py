"""The `openai` rollout engine: samples from any OpenAI-compatible server (vLLM serve, SGLang, `scirl serve`) through
`POST {base_url}/completions`, token ids in and token ids plus per-token log-probs out, and pushes the trainer's
weights to a server that takes them (`scirl serve`'s `POST /update_weights`).

Token ids are never re-tokenized: the prompt goes as ids (`prompt: [ids]`) and the samples come back as ids
(vLLM's `return_token_ids` -> choices[i].token_ids, or `return_tokens_as_token_ids` -> logprobs.tokens
"token_id:N"). The log-probs are the server's processed ones (temperature applied, before top-p), what the trainer
recomputes: `scirl serve` gives those; start vLLM with `--logprobs-mode processed_logprobs`.

At start (`from_config`): the model name (GET {base_url}/models, the first id); whether the server takes weights
(GET {root}/health says "update_weights": true: `scirl serve` without --read-only); the tokenizer check (POST
{root}/tokenize, vLLM's endpoint, of a probe text must give our tokenizer's ids, else refused; a server without
/tokenize is warned about once and the sync guard's first check, before step 1, still compares log-probs of real
ids). A trainer needs a server that takes weights (refused at start otherwise); a read-only engine
(`require_weights=False`) serves evaluation and says so if anyone tries to push weights.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterator

import torch

from scirl import dist
from scirl.errors import ScirlError
from scirl.rollout.assemble import Sample, to_trajectories
from scirl.rollout.base import SamplingParams, Trajectories
from scirl.rollout.openai_client import BadResponse, HTTPStatusError, OpenAIClient

TOKENIZER_PROBE = " Let me think step by step: 12 × 7 = 84, so \\boxed{84}. Ünïcödé 数学 «x²»\n\n"
_TOKEN_ID = "token_id:"


def _token_ids(choice: dict, url: str) -> list[int]:
    """A choice's sampled token ids, as the server returned them (never re-tokenized)."""
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return [int(t) for t in ids]
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) and t.startswith(_TOKEN_ID) for t in tokens):
        return [int(t[len(_TOKEN_ID):]) for t in tokens]
    raise ScirlError(f"rollout.engine=openai: {url} returned no token ids (it needs vLLM's return_token_ids or "
                     f"return_tokens_as_token_ids): scirl cannot re-tokenize text without changing the samples")


def _token_logprobs(choice: dict, count: int, url: str) -> list[float]:
    lps = (choice.get("logprobs") or {}).get("token_logprobs")
    if not isinstance(lps, list) or len(lps) < count or any(x is None for x in lps[:count]):
        raise BadResponse(f"{url} returned no log-prob for some of the {count} sampled tokens")
    return [float(x) for x in lps[:count]]


class OpenAIRolloutEngine:
    """RolloutEngine over HTTP: one request per prompt (its n samples), `max_concurrency` requests in flight."""

    shares_module = False  # the server keeps weights of its own: pushed after every step, checked by the guard

    def __init__(self, client: OpenAIClient, tokenizer, model_name: str, takes_weights: bool,
                 max_concurrency: int = 32, weights_dir: Path | None = None):
        self.client, self.tokenizer, self.model_name = client, tokenizer, model_name
        self.takes_weights = takes_weights
        self.max_concurrency = max(1, max_concurrency)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._weights_parent = weights_dir  # where pushed weights are written (shared disk with the server)
        self._weights_dir: str | None = None
        self._pushes = 0

    # ------------------------------------------------------------------------------------------ start
    @classmethod
    def from_config(cls, cfg, tokenizer, require_weights: bool = True) -> "OpenAIRolloutEngine":
        """Connect to rollout.base_url. `require_weights` (a trainer): refuse a server that cannot take weights."""
        r = cfg.rollout
        api_key = ""
        if r.api_key_env:
            api_key = os.environ.get(r.api_key_env, "")
            if not api_key:
                raise ScirlError(f"rollout.api_key_env={r.api_key_env}: that environment variable is not set")
        client = OpenAIClient(r.base_url, api_key, r.request_timeout, r.max_retries)
        models = client.request("GET", client.url("/models"))
        data = models.get("data") if isinstance(models, dict) else None
        if not data or not isinstance(data[0], dict) or "id" not in data[0]:
            raise ScirlError(f"rollout.engine=openai: GET {client.url('/models')} lists no model")
        takes = cls._takes_weights(client)
        if require_weights and not takes:
            raise ScirlError(
                f"rollout.engine=openai: the server at {client.root} is read-only (GET {client.url('/health', True)} "
                f"does not say \"update_weights\": true): training needs a server that takes the trained weights "
                f"after every step (`scirl serve` without --read-only); a read-only server is fine for evaluation")
        run_dir = getattr(cfg, "run_dir", None)
        engine = cls(client, tokenizer, data[0]["id"], takes, r.max_concurrency, Path(run_dir) if run_dir else None)
        engine.check_tokenizer()
        return engine

    @staticmethod
    def _takes_weights(client: OpenAIClient) -> bool:
        try:
            health = client.request("GET", client.url("/health", root=True), retries=0)
        except ScirlError:  # no /health, or not JSON (vLLM's is an empty 200): cannot take weights as far as we know
            return False
        return isinstance(health, dict) and health.get("update_weights") is True

    def check_tokenizer(self) -> None:
        """Refuse a server whose tokenizer differs from ours (POST {root}/tokenize of a probe text)."""
        url = self.client.url("/tokenize", root=True)
        text = TOKENIZER_PROBE + (self.tokenizer.eos_token or "")
        ours = self.tokenizer.encode(text, add_special_tokens=False)
        try:
            answer = self.client.request("POST", url, {"model": self.model_name, "prompt": text,
                                                       "add_special_tokens": False})
        except HTTPStatusError as e:
            if e.status not in (404, 405):
                raise
            print(f"scirl: warning: {url} does not exist, so the server's tokenizer cannot be compared with "
                  f"model.path's; the sync guard's first check still compares log-probs", file=sys.stderr)
            return
        theirs = answer.get("tokens") if isinstance(answer, dict) else None
        if theirs != ours:
            theirs = list(theirs) if isinstance(theirs, list) else []
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            raise ScirlError(f"rollout.engine=openai: the server at {self.client.root} tokenizes differently from "
                             f"model.path's tokenizer (a probe text: {len(ours)} ids here, {len(theirs)} there, the "
                             f"first difference at id {at}): serve the same model")

    # ------------------------------------------------------------------------------------------ sampling
    def _body(self, prompt: list[int], sampling: SamplingParams, seed: int) -> dict:
        return {"model": self.model_name, "prompt": list(prompt), "n": sampling.n, "seed": seed,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens,
                "logprobs": 0, "return_token_ids": True, "return_tokens_as_token_ids": True}

    def _group(self, prompt: list[int], uid: str, sampling: SamplingParams, seed: int) -> Trajectories:
        """One prompt's n samples: one request (retried), rows as the hf engine builds them."""
        url = self.client.url("/completions")
        parsed: list[tuple[list[int], list[float], bool]] = []

        def check(answer: Any) -> None:
            choices = answer.get("choices") if isinstance(answer, dict) else None
            if not isinstance(choices, list) or len(choices) < sampling.n:
                got = len(choices) if isinstance(choices, list) else "no"
                raise BadResponse(f"{got} choices for n={sampling.n}")
            parsed.clear()
            for choice in sorted(choices, key=lambda c: c.get("index", 0))[: sampling.n]:
                ids = _token_ids(choice, url)
                parsed.append((ids, _token_logprobs(choice, len(ids), url), choice.get("finish_reason") == "length"))

        self.client.request("POST", url, self._body(prompt, sampling, seed), check=check)
        # EOS (when the server stopped on one) is part of the response
        return to_trajectories([Sample(list(prompt), uid, i, ids, lps, cut) for i, (ids, lps, cut) in enumerate(parsed)],
                               self.pad_id, self.tokenizer)

    def _groups(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams
                ) -> Iterator[tuple[int, Trajectories]]:
        """(prompt index, its group) as requests complete; the first failure cancels what has not started. Each
        request carries a seed drawn from this process's torch RNG (seeded by the trainer), so a server that
        honours seeds (scirl serve, vLLM) samples the same rows for the same run."""
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(1, len(prompts))),
                                  thread_name_prefix="scirl-openai")
        try:
            futures: dict[Future, int] = {pool.submit(self._group, p, u, sampling, seeds[i]): i
                                          for i, (p, u) in enumerate(zip(prompts, uids))}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=futures.get):
                    yield futures[f], f.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def generate(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Trajectories:
        groups = dict(self._groups(prompts, uids, sampling))
        return Trajectories.concat([groups[i] for i in range(len(prompts))])

    def stream(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Iterator[Trajectories]:
        """Each prompt's group as its request completes (any order)."""
        for _, group in self._groups(prompts, uids, sampling):
            yield group

    # ------------------------------------------------------------------------------------------ weights
    def sequence_logprobs(self, token_ids: list[int], prompt_len: int, temperature: float) -> torch.Tensor:
        """The server's log pi of token_ids[prompt_len:] at `temperature`: the prompt's echoed log-probs (legacy
        OpenAI `echo` with `logprobs`; one token generated, as servers that refuse max_tokens=0 need). `scirl serve`
        applies the request's temperature to echoed log-probs as to sampled ones; vLLM's prompt log-probs are raw
        (its processed_logprobs mode does not cover prompts), which matters only at temperature != 1 and only for
        a server that takes weights, i.e. the sync guard of a training run: today that is `scirl serve`."""
        url = self.client.url("/completions")
        n = len(token_ids)
        body = {"model": self.model_name, "prompt": list(token_ids), "max_tokens": 1, "echo": True, "logprobs": 0,
                "temperature": temperature, "return_tokens_as_token_ids": True}
        out: list[float] = []

        def check(answer: Any) -> None:
            try:
                lp = answer["choices"][0]["logprobs"]
                tokens, lps = lp["tokens"][:n], lp["token_logprobs"][:n]
            except (KeyError, IndexError, TypeError):
                raise BadResponse("no echoed prompt log-probs") from None
            if len(lps) < n or any(x is None for x in lps[prompt_len:]):
                raise BadResponse(f"{len(lps)} echoed log-probs for a {n}-token prompt")
            if all(isinstance(t, str) and t.startswith(_TOKEN_ID) for t in tokens) and \
                    [int(t[len(_TOKEN_ID):]) for t in tokens] != list(token_ids):
                raise ScirlError(f"rollout.engine=openai: {url} echoed other token ids than the probe it was sent")
            out[:] = [float(x) for x in lps[prompt_len:]]

        self.client.request("POST", url, body, check=check)
        return torch.tensor(out, dtype=torch.float32)

    def update_weights(self, state_dict: dict[str, torch.Tensor] | None) -> None:
        """Write the full named tensors to a safetensors file on shared disk, POST {root}/update_weights {"path"}
        and wait for the server to load them; the file is removed once loaded. Under FSDP rank 0 pushes and the
        other ranks wait for it. A read-only server: ScirlError."""
        if state_dict is None:
            return
        url = self.client.url("/update_weights", root=True)
        if not self.takes_weights:
            raise ScirlError(f"rollout.engine=openai: the server at {self.client.root} is read-only: it cannot take "
                             f"the trainer's weights, so it cannot serve rollouts for training")
        if dist.is_main():
            self._push(state_dict, url)
        if dist.world_size() > 1:
            dist.barrier()

    def _push(self, state_dict: dict[str, torch.Tensor], url: str) -> None:
        from safetensors.torch import save_file

        if self._weights_dir is None:
            parent = self._weights_parent
            if parent is not None:
                parent.mkdir(parents=True, exist_ok=True)
            self._weights_dir = tempfile.mkdtemp(prefix=".weights-push-", dir=parent)
        seen: set[int] = set()
        tensors = {}
        for name, t in state_dict.items():  # tied / shared tensors (embeddings = lm_head): safetensors wants copies
            t = t.detach().to("cpu")
            ptr = t.untyped_storage().data_ptr()
            tensors[name] = t.clone().contiguous() if ptr in seen else t.contiguous()
            seen.add(ptr)
        self._pushes += 1
        path = os.path.join(self._weights_dir, f"weights-{self._pushes}.safetensors")
        save_file(tensors, path + ".tmp")
        os.replace(path + ".tmp", path)
        try:
            self.client.request("POST", url, {"path": path})
        except HTTPStatusError as e:
            if e.status in (403, 404, 405):
                self.takes_weights = False
                raise ScirlError(f"rollout.engine=openai: the server at {self.client.root} is read-only (POST {url}: "
                                 f"HTTP {e.status}): it cannot take the trainer's weights") from None
            raise
        finally:
            os.remove(path)  # loaded (or refused): the server keeps the weights in memory, not the file

    def close(self) -> None:
        if self._weights_dir is not None:
            shutil.rmtree(self._weights_dir, ignore_errors=True)
            self._weights_dir = None
