"""LoRA adapters on the policy (model.lora, peft): wrapping the loaded model, the reference policy as the same
module with the adapter disabled (no second copy of the weights), and the adapter folder a checkpoint's model/
holds (adapter_config.json + adapter_model.safetensors: peft's `save_pretrained`)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from scirl.errors import ScirlError
from scirl.train.logprobs import batched_logprobs, response_log_softmax


def lora_on(cfg) -> bool:
    return cfg.model.lora.rank > 0


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """The short names (last path component) of the model's nn.Linear layers, sorted."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name})


def _check_targets(model: torch.nn.Module, lora) -> None:
    known = linear_layer_names(model)
    bad = [t for t in lora.target_modules if t not in known]
    if not lora.target_modules or bad:
        raise ScirlError(f"model.lora.target_modules: unknown module(s) {', '.join(bad) or '(none given)'}; the "
                         f"model's linear layers are: {', '.join(known)}")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    bad = [t for t in lora.modules_to_save if t not in names]
    if bad:
        raise ScirlError(f"model.lora.modules_to_save: unknown module(s) {', '.join(bad)} in the model")


def apply_lora(model: torch.nn.Module, lora, adapter_path: str | None = None) -> torch.nn.Module:
    """`model` wrapped in a peft PeftModel with a fresh adapter (model.lora), or the adapter saved at
    `adapter_path` (a checkpoint's model/), trainable. Only the adapter (and modules_to_save) require grad."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    if lora.rank < 0:
        raise ScirlError(f"model.lora.rank={lora.rank} must be >= 0 (0 turns LoRA off)")
    _check_targets(model, lora)
    if adapter_path is not None:
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(lora.target_modules),
                            modules_to_save=list(lora.modules_to_save) or None, bias="none",
                            task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def same_adapter_on_all_ranks(model: torch.nn.Module) -> None:
    """Rank 0's freshly initialised adapter on every rank (a broadcast of each trainable tensor; nothing without a
    process group): the ranks seed their generators apart, and FSDP2 keeps each rank's own slice of a parameter,
    so without this the adapter would start as a patchwork of inits instead of the one-process run's."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                tdist.broadcast(p.data, src=0)


def merged_state_dict(state: dict[str, torch.Tensor], lora) -> dict[str, torch.Tensor]:
    """A LoRA policy's state dict (peft names) as the plain model's: every adapter folded into its base weight
    (W + alpha/r * B @ A, in fp32), `modules_to_save` copies under their own names, peft's originals dropped. What
    an engine holding plain HF weights (vLLM, a server, the rollout copy under FSDP) loads after a step; computed
    from the tensors, so the trainer's module is never merged and unmerged in place (no drift)."""
    from scirl.export.lora import LoraSettings, merge_lora, strip_peft_prefix

    plain = {k.replace(".modules_to_save.default.", "."): v for k, v in strip_peft_prefix(state).items()
             if ".original_module." not in k}
    return merge_lora(plain, LoraSettings(lora.rank, lora.alpha), "model.lora")


@contextmanager
def _base_eval(model):
    """The adapter disabled and the module in eval mode (dropout off) for the duration; both restored after."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield model
    finally:
        model.train(was_training)


class AdapterDisabledReference:
    """The reference policy of a LoRA run: the policy's own PeftModel with its adapter disabled (the frozen base,
    i.e. the initial policy), scored under no_grad. Same interface as teachers.FrozenReference."""

    def __init__(self, model: torch.nn.Module, micro_batch_size: int, temperature: float, chunk_size: int = 0):
        self.model = model
        self.micro_batch_size = micro_batch_size
        self.temperature = temperature
        self.chunk_size = chunk_size

    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def logprobs(self, traj) -> torch.Tensor:
        with _base_eval(self.model):
            return batched_logprobs(self.model, traj, self.micro_batch_size, self.temperature, self.chunk_size)

    @torch.no_grad()
    def log_softmax(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    response_ids: torch.Tensor) -> torch.Tensor:
        dev = self.device()
        with _base_eval(self.model):
            return response_log_softmax(self.model, prompt_ids.to(dev), prompt_mask.to(dev), response_ids.to(dev),
                                        self.temperature)
