"""4-bit QLoRA (model.quantization, bitsandbytes): the config checks done at load, the transformers
`BitsAndBytesConfig` the base is loaded with, the peft preparation of the quantised base before the adapter goes
on, and the dequantised fp32 base that `scirl export` folds the adapter into."""

from __future__ import annotations

import logging

import torch

from scirl.errors import ScirlError

QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KEY = "model.quantization"


def quantization_on(cfg) -> bool:
    return bool(cfg.model.quantization.load_in_4bit)


def _bitsandbytes_missing() -> str | None:
    """Why bitsandbytes cannot be imported (None when it can). Its import logs a warning about the optional
    `kernels` package (a faster CPU 4-bit matmul); the plain one works, so that line is silenced."""
    bnb_log = logging.getLogger("bitsandbytes")
    level = bnb_log.level
    bnb_log.setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken native library
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    finally:
        bnb_log.setLevel(level)
    return None


def check_quantization(cfg) -> None:
    """model.quantization against the rest of the config, at load (before any model loads): one line each."""
    q = cfg.model.quantization
    if q.bnb_4bit_quant_type not in QUANT_TYPES:
        raise ScirlError(f"{KEY}.bnb_4bit_quant_type={q.bnb_4bit_quant_type!r} must be one of "
                         f"{', '.join(QUANT_TYPES)}")
    if q.bnb_4bit_compute_dtype not in COMPUTE_DTYPES:
        raise ScirlError(f"{KEY}.bnb_4bit_compute_dtype={q.bnb_4bit_compute_dtype!r} must be one of "
                         f"{', '.join(COMPUTE_DTYPES)}")
    if not q.load_in_4bit:
        return
    if cfg.model.lora.rank <= 0:
        raise ScirlError(f"{KEY}.load_in_4bit=true needs model.lora.rank > 0: a 4-bit base is frozen, QLoRA trains "
                         "the LoRA adapter only")
    missing = _bitsandbytes_missing()
    if missing:
        raise ScirlError(f"{KEY}.load_in_4bit=true needs bitsandbytes, which does not import ({missing}): "
                         "pip install bitsandbytes")
    t, r = cfg.trainer, cfg.rollout
    if t.nproc_per_node * t.nnodes > 1:
        raise ScirlError(f"{KEY}.load_in_4bit=true runs on one process (trainer.nproc_per_node="
                         f"{t.nproc_per_node}, trainer.nnodes={t.nnodes}): FSDP does not shard bitsandbytes' 4-bit "
                         "weights here")
    for key, engine in (("rollout.engine", r.engine), ("rollout.val_engine", r.val_engine)):
        if engine in ("vllm", "openai"):
            raise ScirlError(f"{KEY}.load_in_4bit=true with {key}={engine}: that engine holds plain weights and "
                             "scirl does not push a dequantised merge to it; use the hf engine")
    # distill.teacher=ema works: a LoRA run's EMA teacher averages the adapter only (AdapterEMATeacher)


def bnb_config(q):
    """The transformers BitsAndBytesConfig for model.quantization."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.bnb_4bit_quant_type,
                              bnb_4bit_compute_dtype=COMPUTE_DTYPES[q.bnb_4bit_compute_dtype],
                              bnb_4bit_use_double_quant=q.double_quant)


def prepare_4bit_base(model: torch.nn.Module) -> torch.nn.Module:
    """peft's `prepare_model_for_kbit_training`, without its gradient checkpointing.

    What it does and why it is right here: it freezes every base parameter (peft would anyway) and casts the
    parameters left unquantised (norms, embeddings, an untied lm_head) from bf16 / fp16 to fp32 — the QLoRA
    recipe: those layers then run in fp32 while the 4-bit matmuls run in bnb_4bit_compute_dtype, which keeps the
    small-norm arithmetic stable at a cost of 2 bytes per frozen unquantised weight (an fp32 model is unchanged).
    Its default `use_gradient_checkpointing=True` is not taken: checkpointing stays actor.gradient_checkpointing's
    choice (enabled by build_run, non-reentrant, so the input-embedding `requires_grad` hook it would add for the
    reentrant variant is not needed; the adapter's gradients flow either way, tests/test_qlora.py)."""
    from peft import prepare_model_for_kbit_training

    _no_cpu_repacking(model)
    for module in model.modules():
        if type(getattr(module, "weight", None)).__name__ == "Params4bit":
            module.register_load_state_dict_pre_hook(_check_saved_4bit_weight)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _check_saved_4bit_weight(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """Loading a saved state (a resume's dcp/) into a Linear4bit: its quantisation constants (`weight.absmax`,
    `weight.quant_map`, `weight.quant_state.*`, ...) are not loadable keys of the module. The base is frozen and
    re-quantised from model.path at every start, so they are checked equal to the live ones (with the 4-bit codes)
    and dropped: a resume on a base that quantises differently is one line instead of a silently different base."""
    live = {f"{prefix}weight.{k}": v for k, v in module.weight.quant_state.as_dict(packed=True).items()}
    live[f"{prefix}weight"] = module.weight.data
    for key in [k for k in state_dict if k == f"{prefix}weight" or k.startswith(f"{prefix}weight.")]:
        saved = state_dict[key]
        if key not in live or not torch.equal(saved.to(live[key].device), live[key]):
            raise ScirlError(f"{KEY}: the checkpoint's 4-bit base weight {key} differs from model.path quantised "
                             "now (another model.path, model.quantization or bitsandbytes version)")
        if key != f"{prefix}weight":
            del state_dict[key]


def _no_cpu_repacking(model: torch.nn.Module) -> None:
    """bitsandbytes (0.49+) repacks a Linear4bit's weight in place into an AVX512-BF16 layout the first time it
    runs in eval mode on such a CPU (our rollouts, the reference); after that every forward, training ones included,
    goes through `gemv_4bit`, which has no autograd kernel: gradients through the frozen base would be silently
    wrong (torch warns "an autograd kernel was not registered") and the checkpointed quant state changes shape.
    The flag it reads is turned off, so the weight keeps its one layout and the 4-bit matmul its autograd path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def is_4bit(model: torch.nn.Module) -> bool:
    """Whether any weight of `model` (a PeftModel or a plain one) is a bitsandbytes 4-bit parameter."""
    return any(type(p).__name__ == "Params4bit" for p in model.parameters())


def dequantized(model: torch.nn.Module) -> torch.nn.Module:
    """The 4-bit base as a plain fp32 transformers model: transformers' `dequantize` replaces every Linear4bit by an
    nn.Linear holding bitsandbytes' `dequantize_4bit` of its weight (the values the 4-bit matmul multiplies by) and
    drops `quantization_config` from the config; the other parameters are cast to fp32."""
    model = model.dequantize(dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.to(torch.float32)
