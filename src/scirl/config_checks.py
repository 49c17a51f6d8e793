"""Config validation: reject combinations that cannot run, each with one line naming the offending key."""

from __future__ import annotations

from scirl.config import Config
from scirl.errors import ScirlError
from scirl.registry import unknown_name_error
from scirl.train.quantize import check_quantization

GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus_baseline")  # need >= 2 samples per prompt


def _choice(key: str, value, options) -> None:
    if value not in options:
        raise ScirlError(f"{key}: {unknown_name_error('value', value, [str(o) for o in options])}")


def _registered(key: str, lookup, name: str) -> None:
    try:
        lookup(name)
    except ScirlError as e:
        raise ScirlError(f"{key}: {e}") from None


def validate(cfg: Config) -> None:
    from scirl.algos import KL_KINDS, get_advantage_estimator, get_policy_loss
    from scirl.algos.aggregation import check_mode
    from scirl.ckpt.best import check_best_metric
    from scirl.config_ranges import check_ranges
    from scirl.config_sft import check_sft
    from scirl.rewards import get_reward

    check_ranges(cfg)  # every numeric key in its range, before anything else reads it
    d, r, a, act, t = cfg.data, cfg.rollout, cfg.algorithm, cfg.actor, cfg.trainer
    rc, fg, ob = a.rollout_correction, a.filter_groups, cfg.reward.overlong_buffer
    _registered("algorithm.adv_estimator", get_advantage_estimator, a.adv_estimator)
    _registered("actor.policy_loss", get_policy_loss, act.policy_loss)
    _registered("reward.name", get_reward, cfg.reward.name)
    _registered("actor.loss_agg_mode", check_mode, act.loss_agg_mode)
    check_best_metric(t.best_metric, t.best_mode, r.val_n)
    _choice("actor.kl_loss_type", act.kl_loss_type, KL_KINDS)
    _choice("algorithm.kl_penalty", a.kl_penalty, KL_KINDS)
    _choice("sandbox.tier", cfg.sandbox.tier, ("auto", "bwrap", "landlock", "unsafe"))
    _choice("sandbox.cgroup", "off" if cfg.sandbox.cgroup is False else cfg.sandbox.cgroup, ("auto", "off"))
    _choice("algorithm.kl_ctrl.type", a.kl_ctrl.type, ("fixed", "adaptive"))
    _choice("algorithm.rollout_correction.rollout_is", rc.rollout_is, (None, "token", "sequence"))
    _choice("algorithm.filter_groups.metric", fg.metric, ("acc", "score"))
    _choice("actor.lr_scheduler", act.lr_scheduler, ("constant", "cosine", "linear"))
    _choice("rollout.engine", r.engine, ENGINES)
    _choice("rollout.val_engine", r.val_engine, ("", *ENGINES))
    if "openai" in (r.engine, r.val_engine) and not r.base_url:
        raise ScirlError("rollout.engine=openai needs rollout.base_url (e.g. http://127.0.0.1:8000/v1)")
    _choice("trainer.device", t.device, ("auto", "cpu", "cuda"))
    _choice("trainer.launcher", t.launcher, ("torchrun", "ray"))
    _choice("actor.fsdp.param_dtype", act.fsdp.param_dtype, ("auto", "float32", "bfloat16", "float16"))
    _choice("actor.fsdp.reduce_dtype", act.fsdp.reduce_dtype, ("float32", "bfloat16"))
    _check_loggers(cfg)
    check_sft(cfg)
    _check_data(cfg)
    check_quantization(cfg)
    _check_distill(cfg)
    _check_agent(cfg)

    if a.adv_estimator in GROUP_ESTIMATORS and r.n < 2:
        raise ScirlError(f"rollout.n={r.n}: {a.adv_estimator} needs at least 2 samples per prompt (set rollout.n >= 2)")
    if act.ppo_mini_batch_size < 1 or d.train_batch_size % act.ppo_mini_batch_size:
        raise ScirlError(f"actor.ppo_mini_batch_size={act.ppo_mini_batch_size} must divide "
                         f"data.train_batch_size={d.train_batch_size}")
    if act.use_kl_loss and a.use_kl_in_reward:
        raise ScirlError("actor.use_kl_loss and algorithm.use_kl_in_reward are both on: put the KL term in one place")
    _check_rollout_correction(cfg)
    _check_policy_loss(cfg)
    if fg.enable and r.n < 2:
        raise ScirlError("algorithm.filter_groups.enable needs rollout.n >= 2 (a group of one has no spread)")
    if ob.enable and r.agent.enable and r.agent.max_response_len and ob.len > r.agent.max_response_len:
        raise ScirlError(f"reward.overlong_buffer.len={ob.len} must be <= "
                         f"rollout.agent.max_response_len={r.agent.max_response_len}")
    if ob.enable and not (r.agent.enable and r.agent.max_response_len) and ob.len > r.max_new_tokens:
        raise ScirlError(f"reward.overlong_buffer.len={ob.len} must be <= rollout.max_new_tokens={r.max_new_tokens}")


def _check_agent(cfg: Config) -> None:
    """rollout.agent: the tools exist (one line listing the known ones), the chat_template file exists and, when
    the agent is on, renders the tools' schemas (a template that ignores tools= is refused here; the tokenizer's own
    template is checked when the run builds, train/build.py)."""
    from scirl.agent.engine import check_template_renders_tools, read_chat_template
    from scirl.agent.tools import resolve_tools

    ag = cfg.rollout.agent
    template = read_chat_template(ag.chat_template) if ag.chat_template else None
    if not ag.enable:
        return
    if not ag.tools:
        raise ScirlError("rollout.agent.tools is empty: name at least one tool (e.g. [code_interpreter])")
    tools = resolve_tools(list(ag.tools))
    if template is not None:
        check_template_renders_tools(template, tools, f"rollout.agent.chat_template={ag.chat_template!r}")


def _check_loggers(cfg: Config) -> None:
    from scirl.log.sinks import LOGGERS, check_mlflow_uri, mlflow_uri

    t = cfg.trainer
    for name in t.logger:
        _choice("trainer.logger", name, LOGGERS)
    if "mlflow" in t.logger:
        uri = mlflow_uri(t.mlflow_uri, cfg.run_dir)
        why = check_mlflow_uri(uri)
        if why:
            raise ScirlError(f"trainer.mlflow_uri={t.mlflow_uri or uri!r} cannot be written: {why}")


def _check_data(cfg: Config) -> None:
    from scirl.data.datasets import parse_sources
    from scirl.data.prompts import TEMPLATES, TRUNCATION_MODES

    d = cfg.data
    _choice("data.truncation", d.truncation, TRUNCATION_MODES)
    _choice("data.template", d.template, ("auto", *TEMPLATES))
    parse_sources(d.train, "data.train")
    if any(s.weight is not None for s in parse_sources(d.val, "data.val")):
        raise ScirlError(f"data.val={d.val!r}: mixing weights only apply to data.train (validation reports every source)")


DISTILL_LOSSES = ("rlsd", "sdpo", "opd_topk")
ENGINES = ("hf", "vllm", "openai")
OPD_ESTIMATORS = ("opd_token", "opd_token_plus_grpo")


def uses_teacher(cfg: Config) -> bool:
    """Whether a loss or an advantage estimator of this config reads teacher log-probs."""
    return cfg.actor.policy_loss in DISTILL_LOSSES or cfg.algorithm.adv_estimator in OPD_ESTIMATORS


def teacher_context(cfg: Config) -> str:
    """distill.teacher_context with `auto` resolved: an external teacher (OPD) reads the plain prompt, a self-teacher
    (RLSD / SDPO) the prompt plus a peer solution."""
    ctx = cfg.distill.teacher_context
    if ctx != "auto":
        return ctx
    if cfg.distill.teacher == "external":
        return "none"
    return "peer_solution" if cfg.actor.policy_loss in ("rlsd", "sdpo") else "none"


def _check_distill(cfg: Config) -> None:
    ds, user = cfg.distill, (f"actor.policy_loss={cfg.actor.policy_loss}" if cfg.actor.policy_loss in DISTILL_LOSSES
                             else f"algorithm.adv_estimator={cfg.algorithm.adv_estimator}")
    _choice("distill.teacher", ds.teacher, ("none", "ema", "reference", "external"))
    _choice("distill.teacher_context", ds.teacher_context, ("auto", "peer_solution", "reference", "none"))
    _choice("distill.opd_topk_weight", ds.opd_topk_weight, ("student_p", "teacher_p", "none"))
    if uses_teacher(cfg) and ds.teacher == "none":
        raise ScirlError(f"{user} needs a teacher: set distill.teacher (ema: the RLSD / SDPO self-teacher; external "
                         "with distill.teacher_path for on-policy distillation)")
    if not uses_teacher(cfg) and ds.teacher != "none":
        raise ScirlError(f"distill.teacher={ds.teacher} is unused: no loss or estimator reads a teacher (set "
                         "actor.policy_loss to rlsd / sdpo / opd_topk or algorithm.adv_estimator to an opd_* one)")
    if ds.teacher == "external" and not ds.teacher_path:
        raise ScirlError("distill.teacher=external needs distill.teacher_path (a local folder or hub id)")
    if ds.teacher_path and ds.teacher != "external":
        raise ScirlError(f"distill.teacher_path is only read with distill.teacher=external (got {ds.teacher})")
    if ds.teacher in ("ema", "reference") and teacher_context(cfg) == "none":
        raise ScirlError(f"distill.teacher={ds.teacher} with distill.teacher_context=none: a copy of the student "
                         "reading the same prompt teaches nothing; give it peer_solution or reference context")


def _check_rollout_correction(cfg: Config) -> None:
    """IS thresholds (TIS number or IcePop "lower_upper" / rollout_is_threshold_lower) and chained RS kinds."""
    from scirl.algos.rollout_correction import is_threshold_bounds, rs_kinds, rs_thresholds

    rc, key = cfg.algorithm.rollout_correction, "algorithm.rollout_correction"
    if rc.rollout_is or rc.rollout_is_threshold_lower is not None or rc.rollout_is_batch_normalize:
        try:
            is_threshold_bounds(rc.rollout_is_threshold, rc.rollout_is_threshold_lower)
        except ScirlError as e:
            raise ScirlError(f"{key}.rollout_is_threshold={rc.rollout_is_threshold!r}: {e}") from None
        if not rc.rollout_is:
            raise ScirlError(f"{key}: rollout_is_threshold_lower / rollout_is_batch_normalize act on IS weights; "
                             "set rollout_is (token or sequence)")
    if rc.rollout_rs is not None:
        _registered(f"{key}.rollout_rs", rs_kinds, rc.rollout_rs)
        try:
            rs_thresholds(rs_kinds(rc.rollout_rs), rc.rollout_rs_threshold)
        except ScirlError as e:
            raise ScirlError(f"{key}.rollout_rs_threshold={rc.rollout_rs_threshold!r}: {e}") from None


def _check_policy_loss(cfg: Config) -> None:
    """A loss verl always aggregates one way must be configured that way; the losses' own hyperparameters."""
    from scirl.algos import get_policy_loss

    act, kw = cfg.actor, cfg.actor.policy_loss_kwargs
    fixed = getattr(get_policy_loss(act.policy_loss), "agg_mode", None)
    if fixed and act.loss_agg_mode != fixed:
        raise ScirlError(f"actor.loss_agg_mode={act.loss_agg_mode} with actor.policy_loss={act.policy_loss}: verl "
                         f"always aggregates {act.policy_loss} with {fixed}, whatever loss_agg_mode says; set "
                         f"actor.loss_agg_mode={fixed}")
    if not kw.clip_cov_lb < kw.clip_cov_ub:
        raise ScirlError(f"actor.policy_loss_kwargs.clip_cov_lb={kw.clip_cov_lb} must be < "
                         f"clip_cov_ub={kw.clip_cov_ub}")
    if act.policy_loss == "dro" and kw.dro_beta is None:
        raise ScirlError(f"actor.policy_loss_kwargs.dro_beta={kw.dro_beta}: actor.policy_loss=dro needs a "
                         "quadratic penalty dro_beta > 0 (verl has no default)")
