"""Models that only score tokens: the frozen reference policy (KL terms), the EMA self-teacher (RLSD / SDPO) and an
external teacher (on-policy distillation). They never hold optimizer state: every parameter has requires_grad False,
the module stays in eval mode and every forward runs under no_grad."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch

from scirl.errors import ScirlError
from scirl.rollout.base import Trajectories
from scirl.train.fsdp import compute_device, local, reshard
from scirl.train.logprobs import batched_logprobs, response_log_softmax
from scirl.train.model_loading import load_model_and_tokenizer


class _Teacher:
    """Scoring methods shared by every teacher: `self.model`, `self.micro_batch_size`, `self.temperature`,
    `self.chunk_size` (actor.logprobs_chunk_size: the chunked lm_head for per-token log-probs)."""

    model: torch.nn.Module
    micro_batch_size: int
    temperature: float
    chunk_size: int = 0

    def _freeze(self) -> None:
        self.model.eval().requires_grad_(False)
        for p in self.model.parameters():
            p.grad = None

    def device(self) -> torch.device:
        return compute_device(self.model)

    @torch.no_grad()
    def logprobs(self, traj: Trajectories) -> torch.Tensor:
        """Per-token log-probs [B, R] of traj's responses under the teacher: micro-batched, on CPU, 0 on padding."""
        return batched_logprobs(self.model, traj, self.micro_batch_size, self.temperature, self.chunk_size)

    @torch.no_grad()
    def log_softmax(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    response_ids: torch.Tensor) -> torch.Tensor:
        """log pi_T(. | prompt, earlier response tokens) over the whole vocabulary, [B, R, V], on the teacher's
        device, at the teacher's temperature (one forward: callers micro-batch)."""
        dev = self.device()
        return response_log_softmax(self.model, prompt_ids.to(dev), prompt_mask.to(dev), response_ids.to(dev),
                                    self.temperature)


class FrozenReference(_Teacher):
    """The initial policy, frozen: per-token log-probs of given (prompt, response) pairs."""

    def __init__(self, path: str, dtype: str, device: str, attn: str, micro_batch_size: int, temperature: float,
                 chunk_size: int = 0):
        self.model, _ = load_model_and_tokenizer(path, dtype, device, attn)
        self.model.eval().requires_grad_(False)
        self.micro_batch_size = micro_batch_size
        self.temperature = temperature
        self.chunk_size = chunk_size


class EMATeacher(_Teacher):
    """A self-teacher with its own weights theta_T, initialised to the student's (theta_T = theta_0) and moved
    towards it after each training step: theta_T <- (1 - rate) theta_T + rate theta_S.

    Works with any nn.Module (update / state_dict); logprobs / log_softmax need a causal LM. Buffers (rotary
    inv_freq and the like: constants of the architecture) are copied from the student on each update, not averaged.
    """

    def __init__(self, student_model: torch.nn.Module, micro_batch_size: int = 8, temperature: float = 1.0,
                 chunk_size: int = 0):
        self.model = copy.deepcopy(student_model)
        self._freeze()
        self.micro_batch_size = micro_batch_size
        self.temperature = temperature
        self.chunk_size = chunk_size

    @property
    def state_module(self) -> torch.nn.Module:
        """The module a checkpoint saves for this teacher (its own copy of the model)."""
        return self.model

    @torch.no_grad()
    def update(self, student_model: torch.nn.Module, rate: float) -> None:
        """theta_T <- (1 - rate) theta_T + rate theta_S for every parameter (in place); buffers are copied."""
        _check_rate(rate)
        reshard(student_model)  # sharded: read the parameters' shards, not what a root forward left unsharded
        reshard(self.model)
        mine = dict(self.model.named_parameters())
        theirs = dict(student_model.named_parameters())
        if mine.keys() != theirs.keys():
            missing = sorted(mine.keys() ^ theirs.keys())[:3]
            raise ValueError(f"EMATeacher.update: the student's parameters differ from the teacher's ({missing})")
        for name, t in mine.items():  # on each rank's own shards when both are sharded alike: no gather
            t, s = local(t), local(theirs[name].detach())
            t.lerp_(s.to(device=t.device, dtype=t.dtype), float(rate))
        buffers = dict(student_model.named_buffers())
        for name, b in self.model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name].to(b.device))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The teacher's own tensors (for checkpoints)."""
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)
        self._freeze()


def _check_rate(rate) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or not 0 <= rate <= 1:
        raise ScirlError(f"distill.teacher_update_rate must be a number in [0, 1], got {rate!r}")


class _TensorStore(torch.nn.Module):
    """Named tensors as buffers of a module (module names may not contain '.': it becomes '__'), so that the
    checkpoint code saves and restores them like any other module."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name.replace(".", "__"), t)

    def tensor(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))


class AdapterEMATeacher(_Teacher):
    """The EMA self-teacher of a LoRA run: theta_T = the frozen base + an EMA of the *trainable* tensors only (the
    adapter and modules_to_save), theta_T <- (1 - rate) theta_T + rate theta_S on those. The base is held once:
    to score, the student's module is run with the EMA tensors standing in for its trainable parameters (swapped as
    module attributes, not copied into them: the student's parameters, and any autograd graph that saved them, are
    untouched). Memory: one adapter, not one model."""

    def __init__(self, student_model: torch.nn.Module, micro_batch_size: int = 8, temperature: float = 1.0,
                 chunk_size: int = 0):
        self.model = student_model
        self.names = [n for n, p in student_model.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError("AdapterEMATeacher: the student has no trainable parameters")
        params = dict(student_model.named_parameters())
        self.state_module = _TensorStore({n: params[n].detach().clone() for n in self.names})
        self.micro_batch_size = micro_batch_size
        self.temperature = temperature
        self.chunk_size = chunk_size

    @torch.no_grad()
    def update(self, student_model: torch.nn.Module, rate: float) -> None:
        _check_rate(rate)
        reshard(student_model)
        params = dict(student_model.named_parameters())
        for name in self.names:
            t = local(self.state_module.tensor(name))
            t.lerp_(local(params[name].detach()).to(device=t.device, dtype=t.dtype), float(rate))

    @contextmanager
    def _as_teacher(self):
        """The student's module with the EMA tensors in place of its trainable parameters, in eval mode, for the
        duration; its parameters and mode restored after. torch's `_reparametrize_module` is what the public
        `torch.func.functional_call` runs on; used directly because scoring calls the model several ways (forward,
        the chunked lm_head), which one functional call cannot wrap."""
        from torch.nn.utils.stateless import _reparametrize_module

        was_training = self.model.training
        self.model.eval()
        try:
            with _reparametrize_module(self.model, {n: self.state_module.tensor(n) for n in self.names}):
                yield
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def logprobs(self, traj: Trajectories) -> torch.Tensor:
        with self._as_teacher():
            return super().logprobs(traj)

    @torch.no_grad()
    def log_softmax(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    response_ids: torch.Tensor) -> torch.Tensor:
        with self._as_teacher():
            return super().log_softmax(prompt_ids, prompt_mask, response_ids)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: self.state_module.tensor(n) for n in self.names}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n in self.names:
                self.state_module.tensor(n).copy_(state_dict[n])


def tokenizer_mismatch(teacher_tokenizer, student_tokenizer) -> str | None:
    """Why two tokenizers would tokenize differently (vocabulary, eos id), or None when they match."""
    tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if len(tv) != len(sv):
        return f"vocab sizes {len(tv)} vs {len(sv)}"
    if tv != sv:
        token = min((tok for tok in sv if tv.get(tok) != sv[tok]), key=sv.__getitem__)
        where = f"id {tv[token]}" if token in tv else "missing"
        return f"first differing token {token!r}: teacher {where}, student id {sv[token]}"
    if teacher_tokenizer.eos_token_id != student_tokenizer.eos_token_id:
        return f"eos ids {teacher_tokenizer.eos_token_id} vs {student_tokenizer.eos_token_id}"
    return None


class ExternalTeacher(_Teacher):
    """Another (frozen) model sharing the student's tokenizer: the teacher of on-policy distillation."""

    def __init__(self, path: str, dtype: str, device: str, attn: str, micro_batch_size: int, temperature: float,
                 student_tokenizer, chunk_size: int = 0):
        try:
            self.model, self.tokenizer = load_model_and_tokenizer(path, dtype, device, attn)
        except ScirlError as e:  # its messages name model.path; this path is distill.teacher_path
            raise ScirlError(str(e).replace("model.path:", "distill.teacher_path:", 1)) from None
        reason = tokenizer_mismatch(self.tokenizer, student_tokenizer)
        if reason is not None:
            raise ScirlError(f"distill.teacher_path: the teacher's tokenizer differs from the student's ({reason}); "
                             "on-policy distillation scores the student's tokens, so both must share one tokenizer")
        self._freeze()
        self.micro_batch_size = micro_batch_size
        self.temperature = temperature
        self.chunk_size = chunk_size
