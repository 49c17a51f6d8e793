"""Typed run configuration: dataclasses, loaded from a YAML recipe plus dotted `key=value` overrides, validated.

Names follow verl's where the concept is the same (`clip_ratio_low`, `loss_agg_mode`, `ppo_mini_batch_size`, ...),
so a verl user can port a script key by key. Unknown keys are errors that name the closest valid key; nothing is
silently rewritten.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scirl.config_sections import AgentConfig, LoraConfig, QuantizationConfig, RayConfig, SandboxConfig
from scirl.config_sft import SFTConfig
from scirl.errors import ScirlError

BUILTIN_RECIPE = Path(__file__).parent / "recipes" / "tiny_grpo.yaml"


@dataclass
class ModelConfig:
    path: str = "builtin:tiny-qwen3"  # local folder, hub id, or builtin:<name> (a model bundled in scirl/assets)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"
    lora: LoraConfig = field(default_factory=LoraConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)


@dataclass
class DataConfig:
    """Sources are dataset specs (scirl.data.datasets): `NAME`, `NAME/VARIANT`, a local file path, or a
    comma-separated mixture, weighted for training as `a:0.7,b:0.3`."""

    train: str = "tiny_physics"
    val: str = "tiny_physics"
    data_dir: str | None = None  # folder laid out like ../shared/data; default $SCIRL_DATA_DIR, else the hub
    fields: dict = field(default_factory=dict)  # field mapping for local files: {prompt: question, answer: ...}
    train_size: int | None = None  # prompts per train source: synthetic sources generate this many (default
    val_size: int | None = None  # 1000 / 64); real sources keep their first N. null = all
    seed: int = 0
    train_batch_size: int = 16  # prompts per training step
    max_prompt_length: int = 256
    truncation: str = "drop"  # prompts longer than max_prompt_length: drop (counted) | left | right | error
    template: str = "auto"  # auto | cot_boxed | answer_tag | plain | source (scirl.data.prompts)
    system_prompt: str | None = None  # replaces the template's system message when set
    dedup: bool = True  # drop repeated prompts (same rendered messages), counted
    shuffle: bool = True
    enable_thinking: bool = True  # passed to the chat template


@dataclass
class RolloutConfig:
    engine: str = "hf"
    n: int = 8  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48  # verl: data.max_response_length
    val_n: int = 8  # verl: rollout.val_kwargs.n
    val_temperature: float = 1.0
    val_top_p: float = 1.0
    val_engine: str = ""  # the engine validation samples with: hf | vllm | openai ("": rollout.engine)
    hf_max_batch_size: int = 1024  # hf: rows per `generate` call; with reward.overlap the finished prompt groups of
    # each call are scored while the next call generates (smaller: more overlap, fewer rows decoded at once)
    # vllm (colocated in the trainer process; verl's keys)
    gpu_memory_utilization: float = 0.5  # the share of GPU memory vLLM takes (weights + KV cache)
    enforce_eager: bool = False  # no CUDA graphs / torch.compile (faster start, slower decoding)
    free_cache_engine: bool = True  # GPU: sleep the engine (free its KV cache) between rollout and update
    max_num_seqs: int = 256  # sequences vLLM decodes at once
    max_model_len: int = 0  # vLLM's context length (0: data.max_prompt_length + rollout.max_new_tokens)
    # openai: any OpenAI-compatible /v1/completions server (vLLM serve, SGLang, scirl serve)
    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str = ""  # the environment variable holding the API key ("": none)
    max_concurrency: int = 32  # requests in flight at once
    request_timeout: float = 600.0  # seconds per request
    max_retries: int = 3  # retries of a failed request (backoff 0.5 s, 1 s, 2 s, ...)
    # weight sync guard: engine vs trainer log-probs of a fixed probe sequence, every sync_check_freq steps
    sync_check_freq: int = 50  # 0: never
    sync_check_tol: float = 0.05  # mean |log-prob diff| above which the run stops
    agent: AgentConfig = field(default_factory=AgentConfig)


@dataclass
class OverlongBufferConfig:
    """DAPO overlong reward shaping: R -= factor * (len - (max_new_tokens - len_buffer)) / len_buffer past the soft limit."""

    enable: bool = False
    len: int = 16
    penalty_factor: float = 1.0


@dataclass
class KLControlConfig:
    type: str = "fixed"  # fixed | adaptive
    kl_coef: float = 0.001
    target_kl: float = 0.1
    horizon: int = 10000


@dataclass
class RolloutCorrectionConfig:
    """Importance sampling (lp_old - lp_rollout) and rejection sampling, as current verl's rollout_correction."""

    rollout_is: str | None = None  # null | token | sequence
    rollout_is_threshold: str | float = 2.0  # C: truncate at C (TIS) | "lower_upper", e.g. "0.5_5.0": IcePop,
    # zero weights outside [lower, upper] (quote it in YAML: 0.5_5 would read as the number 0.55)
    rollout_is_threshold_lower: float | None = None  # IcePop lower bound with a numeric rollout_is_threshold
    rollout_is_batch_normalize: bool = False  # rescale the IS weights to mean 1 over the batch
    rollout_rs: str | None = None  # null | token_k1 | seq_mean_k3 | ... | a chain "token_k1,seq_mean_k3"
    rollout_rs_threshold: str | float = 2.0  # one shared entry or "a,b" one per kind; k1 kinds: C or "lo_hi"


@dataclass
class FilterGroupsConfig:
    """DAPO dynamic sampling: drop groups whose metric has zero std, keep sampling until the batch is full."""

    enable: bool = False
    metric: str = "acc"  # acc | score (score includes overlong shaping and KL-in-reward)
    max_num_gen_batches: int = 10  # 0: unlimited


@dataclass
class RewardConfig:
    name: str = "dataset"  # dataset: each sample's own dataset reward (math for AIME, mcq for SciKnowEval, ...)
    workers: int = 1  # reward worker processes; 0 runs inline (no timeout enforcement)
    timeout: float = 10.0  # seconds per call; a call past it is killed and scores 0
    kwargs: dict = field(default_factory=dict)  # passed to the reward as `info`
    overlap: bool = True  # score each finished chunk of prompt groups while the engine generates the next (same
    # rows and scores as off; timing/reward is then only the scoring not hidden behind generation)
    overlong_buffer: OverlongBufferConfig = field(default_factory=OverlongBufferConfig)


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"  # grpo | rloo | reinforce_plus_plus | reinforce_plus_plus_baseline | opd_token
    norm_adv_by_std_in_grpo: bool = True  # False = Dr.GRPO
    gamma: float = 1.0  # discount for reinforce_plus_plus
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0  # dual-clip bound, must be > 1
    use_kl_in_reward: bool = False
    kl_penalty: str = "kl"  # estimator for KL-in-reward
    kl_ctrl: KLControlConfig = field(default_factory=KLControlConfig)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    filter_groups: FilterGroupsConfig = field(default_factory=FilterGroupsConfig)
    overlong_filtering: bool = False  # mask truncated responses out of the loss


@dataclass
class PolicyLossKwargsConfig:
    """Hyperparameters of individual policy losses, under verl's names (verl: actor.policy_loss.<name>, and
    actor.tau_pos / tau_neg for SAPO); each loss reads only its own."""

    tau_pos: float = 1.0  # sapo: gate temperature where A > 0
    tau_neg: float = 1.05  # sapo: gate temperature where A <= 0
    clip_cov_ratio: float = 0.0002  # clip_cov: at most this fraction of tokens lose their gradient
    clip_cov_lb: float = 1.0  # clip_cov: covariance window (lb, ub) of those tokens
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 0.0002  # kl_cov: fraction of tokens (largest covariance) that get the KL penalty
    ppo_kl_coef: float = 0.1  # kl_cov: coefficient of |lp - lp_old| on them
    dro_beta: float | None = None  # dro: quadratic log-ratio penalty, required (> 0) by dro


@dataclass
class FsdpConfig:
    """FSDP2 sharding of the actor (and of the reference / teachers the same way) when world size > 1."""

    param_dtype: str = "auto"  # auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16
    reduce_dtype: str = "float32"  # gradient reduce-scatter dtype: float32 | bfloat16
    offload: bool = False  # keep sharded parameters, gradients and optimizer state in CPU memory (CPUOffloadPolicy)
    reshard_after_forward: bool = True  # free gathered layers after forward (ZeRO-3); false keeps them (ZeRO-2)


@dataclass
class ActorConfig:
    policy_loss: str = "vanilla"
    loss_agg_mode: str = "token-mean"
    ppo_mini_batch_size: int = 16  # prompts per optimizer step (x rollout.n sequences)
    ppo_micro_batch_size: int = 64  # sequences per forward/backward (gradient accumulation)
    ppo_epochs: int = 1
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    lr_scheduler: str = "constant"  # constant | cosine | linear (after warmup)
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    policy_loss_kwargs: PolicyLossKwargsConfig = field(default_factory=PolicyLossKwargsConfig)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    gradient_checkpointing: bool = False  # recompute each decoder layer's activations in backward
    # response tokens per lm_head + log-softmax chunk: per-token log-probs and entropy without [B, R, V] logits
    # (train/logprobs.py). 0: auto, chunks of <= 2**27 logits (512 MiB fp32; 884 tokens at Qwen3's 151,669
    # vocabulary; the tiny model's 517 never chunks). A micro-batch with at most one chunk of tokens computes full
    # logits, so a value above every micro-batch's token count turns chunking off. SDPO / top-k OPD and the OPD
    # diagnostics (distill.diagnostics_topk) read whole distributions and always compute full logits.
    logprobs_chunk_size: int = 0


@dataclass
class DistillConfig:
    """Teacher signals: RLSD (actor.policy_loss: rlsd), SDPO (actor.policy_loss: sdpo) and on-policy distillation
    (algorithm.adv_estimator: opd_token | opd_token_plus_grpo, or actor.policy_loss: opd_topk).
    RLSD / SDPO names follow the RLSD seed (SDPO codebase): token_reweight_*, teacher_update_rate, max_reprompt_len."""

    teacher: str = "none"  # none | ema (self-teacher, theta_T <- (1-a) theta_T + a theta_S) | reference | external
    teacher_path: str | None = None  # the external teacher (OPD); must share the student's tokenizer
    teacher_update_rate: float = 0.05  # EMA rate a, applied after each step with >= 1 optimizer step
    teacher_context: str = "auto"  # auto (external teacher: none, self-teacher: peer_solution) | peer_solution |
    # reference (the gold answer as the solution) | none (the student's prompt as is)
    success_threshold: float = 0.5  # a peer solution must score at least this
    include_environment_feedback: bool = False
    reprompt_template: str = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
    solution_template: str = "\nCorrect solution:\n\n{solution}"
    max_reprompt_len: int = 10240  # tokens of the teacher's context (right-truncated)
    token_reweight_lambda: float = 0.5  # RLSD lambda: A * ((1 - lambda) + lambda * w)
    token_reweight_eps_w: float = 0.2  # RLSD: w clipped to [1 - eps_w, 1 + eps_w]
    token_reweight_decay_steps: int = 0  # RLSD: lambda decays linearly to 0 over this many steps (0: constant)
    sdpo_alpha: float = 0.5  # 0 forward KL(q||p), 1 reverse KL(p||q), between: generalized JSD
    sdpo_topk: int = 100
    sdpo_is_clip: float = 2.0
    opd_topk: int = 16  # top-k OPD: the student's top-k tokens per position
    opd_topk_weight: str = "student_p"  # student_p | teacher_p | none
    opd_grpo_weight: float = 1.0  # opd_token_plus_grpo: A = A_opd + w * A_grpo
    diagnostics_topk: int = 16  # teacher/student top-k overlap, overlap mass, entropy gap (0: off)


@dataclass
class TrainerConfig:
    total_steps: int = 30
    test_freq: int = 0  # validate every N steps (0: only at start and end)
    save_freq: int = 10  # checkpoint every N steps (0: only at the end)
    keep_last: int = 0  # keep the newest N checkpoints, deleting older ones (0: keep all; the newest is never deleted)
    save_on_signal: bool = True  # SIGTERM / Ctrl-C: checkpoint at the next step boundary, then exit 128+signal
    seed: int = 1
    run_name: str = "tiny_grpo"
    output_dir: str = "runs"  # run folder is <output_dir>/<run_name>
    resume: str = "auto"  # auto (continue the run folder's latest checkpoint) | disable (new run) | <checkpoint folder>
    overwrite: bool = False  # start a new run even if the run folder holds one: the old folder is moved aside
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # torch intra-op threads on CPU (0: all cores)
    progress: bool = True  # progress on stderr: a live bar on a terminal, lines with ETA in logs (scirl.progress)
    nproc_per_node: int = 1  # training processes per machine (> 1: scirl starts them with torchrun or Ray)
    nnodes: int = 1  # machines (Ray launcher; with torchrun start one torchrun per machine yourself)
    launcher: str = "torchrun"  # torchrun | ray: how scirl starts nnodes x nproc_per_node processes
    save_hf: bool = True  # each checkpoint also holds a loadable HF folder (model/), gathered on rank 0
    best_metric: str = ""  # eval JSON metric (mean@k, pass@k, maj@k, best@k; val/ prefix ok) kept in checkpoints/best/
    best_mode: str = "max"  # max | min: which way best_metric improves
    logger: list[str] = field(default_factory=lambda: ["console", "jsonl"])  # + tensorboard | mlflow | wandb
    mlflow_uri: str = ""  # MLflow tracking URI: a folder (file store) or sqlite:///file.db ("": <run folder>/mlruns)
    project_name: str = "scirl"  # the MLflow experiment / W&B project; the run is trainer.run_name


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)  # `scirl sft` (scirl.config_sft)

    @property
    def run_dir(self) -> Path:
        return Path(self.trainer.output_dir) / self.trainer.run_name


def all_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the config schema."""
    cfg = cfg if cfg is not None else Config()
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str, where: str) -> ScirlError:
    leaf = key.rsplit(".", 1)[-1]  # first the same last component elsewhere (`actor.tau_pos`, `trainer.clip_ratio_high`)
    close = [k for k in all_keys() if k.rsplit(".", 1)[-1] == leaf][:1]
    close = close or difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ScirlError(f"unknown config key '{key}'{where}{hint}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert a YAML value to the field's declared type; no silent rewriting beyond int -> float."""
    args = typing.get_args(annotation)
    if type(None) in args:  # `X | None`: null is fine, anything else must be an X
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
    kind = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}.get(
        annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""), None
    )
    if kind is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ScirlError(f"config key '{key}' expects {kind.__name__}, got {value!r}")
    return value


def _apply(node: Any, data: dict, prefix: str, where: str) -> None:
    if not isinstance(data, dict):
        raise ScirlError(f"config section '{prefix.rstrip('.') or '<root>'}'{where} must be a mapping")
    hints = typing.get_type_hints(type(node))
    names = {f.name for f in dataclasses.fields(node)}
    for name, value in data.items():
        key = prefix + str(name)
        if name not in names:
            raise _unknown_key(key, where)
        current = getattr(node, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value or {}, key + ".", where)
        else:
            setattr(node, name, _coerce(value, hints[name], key))


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ScirlError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw != "" else ""  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_float(self, node):
        text = self.construct_scalar(node)
        if "_" in text:  # YAML 1.1 reads 0.5_2 as 0.52: keep the text (verl's "lower_upper" thresholds); a float
            return text  # key still converts it as Python does
        return super().construct_yaml_float(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error or a duplicate key is one line naming the file, line and column."""
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ScirlError(f"{path}{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ScirlError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from a YAML recipe (the bundled tiny recipe when None) and dotted overrides, then validate."""
    path = Path(recipe) if recipe is not None else BUILTIN_RECIPE
    if not path.is_file():
        raise ScirlError(f"recipe file not found: {path}")
    data = read_yaml(path) or {}
    cfg = Config()
    _apply(cfg, data, "", f" in {path}")
    for item in overrides:
        key, value = parse_override(item)
        nested: dict = {}
        cursor = nested
        parts = key.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        if key not in all_keys():
            dict_leaf = next((k for k in all_keys() if key.startswith(k + ".") and isinstance(_get(cfg, k), dict)), None)
            if dict_leaf is None:
                raise _unknown_key(key, " on the command line")
            _get(cfg, dict_leaf)[key[len(dict_leaf) + 1:]] = value  # e.g. data.fields.prompt=question
            continue
        _apply(cfg, nested, "", " on the command line")
    from scirl.config_checks import validate  # needs the registries (torch); the schema does not

    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    from scirl.fsutil import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
