"""The allowed range of every numeric config key, checked when the config loads: before any model or data loads,
one line naming the key, its value and the range (exit 2). NaN and infinities are refused for every float key.

`RANGES` must name every int / float key of the schema (a test checks it), so a new key gets its range the day
it is added. Checks between keys (a mini-batch that divides the batch, ...) live in scirl.config_checks.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from scirl.errors import ScirlError

INF = math.inf
SEED_MAX = 2**32 - 1  # numpy's seed range; torch accepts more


@dataclass(frozen=True)
class Range:
    low: float = -INF
    high: float = INF
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def contains(self, v: float) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def text(self) -> str:
        if self.high == INF:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low == -INF:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def at_least(x: float, why: str = "") -> Range:
    return Range(x, why=why)


def above(x: float, why: str = "") -> Range:
    return Range(x, low_open=True, why=why)


ANY = Range()
UNIT = Range(0.0, 1.0)
COUNT = at_least(1)
NON_NEG = at_least(0)
PROB_TOP_P = Range(0.0, 1.0, low_open=True)
SEED = Range(0, SEED_MAX)

RANGES: dict[str, Range] = {
    "model.lora.rank": at_least(0, "0 turns LoRA off"), "model.lora.alpha": above(0),
    "model.lora.dropout": Range(0.0, 1.0, high_open=True),
    "data.train_size": COUNT, "data.val_size": COUNT, "data.seed": SEED, "data.train_batch_size": COUNT,
    "data.max_prompt_length": COUNT,
    "rollout.n": COUNT,
    "rollout.temperature": above(0, "greedy rollouts give every sample of a group the same answer, so GRPO's "
                                    "advantages and gradient are 0; greedy validation is rollout.val_temperature=0"),
    "rollout.top_p": PROB_TOP_P,
    "rollout.max_new_tokens": COUNT, "rollout.val_n": COUNT, "rollout.val_temperature": NON_NEG,
    "rollout.val_top_p": PROB_TOP_P,
    "rollout.gpu_memory_utilization": Range(0.0, 1.0, low_open=True), "rollout.max_num_seqs": COUNT,
    "rollout.hf_max_batch_size": COUNT,
    "rollout.max_model_len": NON_NEG, "rollout.max_concurrency": COUNT, "rollout.request_timeout": above(0),
    "rollout.max_retries": NON_NEG, "rollout.sync_check_freq": NON_NEG, "rollout.sync_check_tol": above(0),
    "rollout.agent.max_turns": COUNT, "rollout.agent.max_response_len": at_least(0, "0 means rollout.max_new_tokens"),
    "rollout.agent.max_tool_response_len": COUNT, "rollout.agent.tool_timeout": above(0),
    "reward.workers": NON_NEG, "reward.timeout": above(0),
    "reward.overlong_buffer.len": COUNT, "reward.overlong_buffer.penalty_factor": NON_NEG,
    "algorithm.gamma": UNIT,
    "algorithm.clip_ratio_low": Range(0.0, 1.0, high_open=True, why="1 - clip_ratio_low is the lower ratio bound"),
    "algorithm.clip_ratio_high": NON_NEG,
    "algorithm.clip_ratio_c": above(1, "the dual-clip bound"),
    "algorithm.kl_ctrl.kl_coef": NON_NEG, "algorithm.kl_ctrl.target_kl": above(0), "algorithm.kl_ctrl.horizon": COUNT,
    "algorithm.rollout_correction.rollout_is_threshold_lower": above(0),
    "algorithm.filter_groups.max_num_gen_batches": at_least(0, "0 means unlimited"),
    "actor.ppo_mini_batch_size": COUNT, "actor.ppo_micro_batch_size": COUNT, "actor.ppo_epochs": COUNT,
    "actor.lr": NON_NEG, "actor.weight_decay": NON_NEG, "actor.warmup_steps": NON_NEG, "actor.min_lr_ratio": UNIT,
    "actor.grad_clip": above(0, "0 zeroes every update and a negative value flips its direction"),
    "actor.entropy_coeff": ANY, "actor.kl_loss_coef": NON_NEG,
    "actor.policy_loss_kwargs.tau_pos": above(0), "actor.policy_loss_kwargs.tau_neg": above(0),
    "actor.policy_loss_kwargs.clip_cov_ratio": Range(0.0, 1.0, low_open=True),
    "actor.policy_loss_kwargs.clip_cov_lb": ANY, "actor.policy_loss_kwargs.clip_cov_ub": ANY,
    "actor.policy_loss_kwargs.kl_cov_ratio": Range(0.0, 1.0, low_open=True),
    "actor.policy_loss_kwargs.ppo_kl_coef": NON_NEG, "actor.policy_loss_kwargs.dro_beta": above(0),
    "distill.teacher_update_rate": UNIT, "distill.success_threshold": ANY, "distill.max_reprompt_len": COUNT,
    "distill.token_reweight_lambda": UNIT, "distill.token_reweight_eps_w": NON_NEG,
    "distill.token_reweight_decay_steps": NON_NEG, "distill.sdpo_alpha": UNIT, "distill.sdpo_topk": COUNT,
    "distill.sdpo_is_clip": above(0), "distill.opd_topk": COUNT, "distill.opd_grpo_weight": NON_NEG,
    "distill.diagnostics_topk": at_least(0, "0 turns the diagnostics off"),
    "trainer.total_steps": NON_NEG, "trainer.test_freq": at_least(0, "0 validates at the start and end only"),
    "trainer.save_freq": at_least(0, "0 saves at the end only"), "trainer.keep_last": at_least(0, "0 keeps all"),
    "trainer.seed": SEED, "trainer.num_threads": at_least(0, "0 uses every core"),
    "trainer.nproc_per_node": COUNT, "trainer.nnodes": COUNT,
    "actor.logprobs_chunk_size": at_least(0, "0 picks the chunk from the vocabulary size"),
    "ray.num_cpus_per_worker": NON_NEG, "ray.num_gpus_per_worker": NON_NEG,
    "ray.object_store_memory": at_least(78643200, "Ray's minimum object store is 75 MiB"),
    "sandbox.workers": COUNT, "sandbox.timeout": above(0), "sandbox.memory_mb": at_least(64, "python3 needs ~30 MB"),
    "sandbox.cpu_seconds": COUNT, "sandbox.max_processes": COUNT, "sandbox.file_size_mb": COUNT,
    "sandbox.disk_mb": COUNT, "sandbox.max_fds": at_least(16, "python3 opens ~5 at start"),
    "sandbox.max_output_bytes": COUNT,
    "sft.epochs": COUNT, "sft.max_steps": at_least(0, "0 lets sft.epochs decide"), "sft.batch_size": COUNT,
    "sft.micro_batch_tokens": COUNT, "sft.max_length": COUNT,
}
LIST_RANGES: dict[str, tuple[int, Range]] = {  # key: (length, range of each item)
    "actor.betas": (2, Range(0.0, 1.0, high_open=True)),
}


def numeric_keys(cfg_cls: type | None = None, prefix: str = "") -> dict[str, type]:
    """Every int / float (optional included) leaf key of the schema -> its type."""
    from scirl.config import Config

    cls = cfg_cls or Config
    hints = typing.get_type_hints(cls)
    out: dict[str, type] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(numeric_keys(hint, f"{prefix}{f.name}."))
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if args[0] in (int, float):
            out[prefix + f.name] = args[0]
    return out


def _fail(key: str, value, rng: Range) -> ScirlError:
    why = f" ({rng.why})" if rng.why else ""
    return ScirlError(f"{key}={value!r} must be {rng.text()}{why}")


def check_value(key: str, value, rng: Range) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ScirlError(f"{key}={value!r} must be a finite number")
    if not rng.contains(value):
        raise _fail(key, value, rng)


def check_ranges(cfg) -> None:
    from scirl.config import _get

    for key in numeric_keys():
        if key in RANGES:
            check_value(key, _get(cfg, key), RANGES[key])
    for key, (length, rng) in LIST_RANGES.items():
        value = _get(cfg, key)
        if len(value) != length or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ScirlError(f"{key}={value!r} must be {length} numbers")
        for v in value:
            if not (math.isfinite(v) and rng.contains(v)):
                raise ScirlError(f"{key}={value!r}: each value must be {rng.text()}")
    t = cfg.trainer
    name = t.run_name
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        raise ScirlError(f"trainer.run_name={name!r} must be a plain folder name (not empty, no '/'): the run folder "
                         "is <trainer.output_dir>/<trainer.run_name>")
    if not t.output_dir.strip():
        raise ScirlError("trainer.output_dir is empty: set the folder that holds the run folders (default runs)")
