"""RLSD, SDPO and OPD through the real trainer on the bundled tiny model: wiring, metrics, EMA, resume, recipes."""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from scirl.ckpt.sharded import read_saved
from scirl.config import load_config
from scirl.data.prompts import tokenize_prompts
from scirl.data.synthetic import make_problems
from scirl.errors import ScirlError
from scirl.rewards import RewardPool
from scirl.rollout.hf_engine import HFRolloutEngine
from scirl.train.actor import Actor
from scirl.train.distill import make_teacher
from scirl.train.loop import run_training
from scirl.train.step import StepContext, train_step
from tests.conftest import REPO, small_overrides

TEACHER = "builtin:tiny-qwen3-teacher"
RLSD = {"actor.policy_loss": "rlsd", "distill.teacher": "ema", "distill.max_reprompt_len": 200,
        "algorithm.rollout_correction.rollout_is": "token", "actor.lr": 1e-3}
OPD = {"algorithm.adv_estimator": "opd_token", "distill.teacher": "external", "distill.teacher_path": TEACHER,
       "rollout.n": 2, "actor.lr": 1e-3}


def rows_of(cfg):
    return [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]


def step_ctx(tmp_path, tiny, overrides):
    """A StepContext on a private copy of the tiny model, with the configured teacher."""
    model, tok = tiny
    model = copy.deepcopy(model)
    cfg = load_config(None, small_overrides(tmp_path, **overrides))
    samples, ids, _ = tokenize_prompts(make_problems("train", 16, seed=4), tok, 256, True, "x")
    for s in samples:
        s.reward = "boxed_numeric"
    teacher = make_teacher(cfg, model, tok, None, "cpu")
    return StepContext(cfg, Actor(model, cfg), HFRolloutEngine(model, tok), RewardPool("dataset", workers=0),
                       lambda: (samples[:4], ids[:4]), None, None, teacher, tok)


def test_rlsd_trains_and_logs_its_weights(tmp_path):
    cfg = load_config(None, small_overrides(tmp_path, **RLSD))
    run_training(cfg)
    rows = rows_of(cfg)
    for row in rows:  # the weight mean's value is checked by hand in test_toolbox_training
        assert row["actor/rlsd/context_frac"] == pytest.approx(row["distill/context_frac"], abs=0.1)  # token-weighted
        assert 0 < row["opd/topk_overlap"] <= 1 and "opd/entropy_gap" in row
    assert any(row["distill/context_frac"] > 0 for row in rows)


def test_rlsd_with_zero_lambda_is_grpo(tmp_path, tiny_model_and_tokenizer):
    """lambda = 0 turns the reweighting off: the update equals plain GRPO's, bit for bit."""
    weights = []
    for loss, extra in (("rlsd", {"distill.token_reweight_lambda": 0.0}), ("vanilla", {})):
        overrides = {**RLSD, "actor.policy_loss": loss, **extra}
        if loss == "vanilla":
            overrides.pop("distill.teacher")
            overrides.pop("distill.max_reprompt_len")
        torch.manual_seed(0)
        ctx = step_ctx(tmp_path, tiny_model_and_tokenizer, overrides)
        train_step(ctx)
        weights.append({k: v.detach().clone() for k, v in ctx.actor.model.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_ema_teacher_follows_the_student(tmp_path, tiny_model_and_tokenizer):
    ctx = step_ctx(tmp_path, tiny_model_and_tokenizer, {**RLSD, "distill.teacher_update_rate": 0.25})
    before = {k: v.clone() for k, v in ctx.teacher.state_dict().items()}
    train_step(ctx)
    student = ctx.actor.model.state_dict()
    teacher = ctx.teacher.state_dict()
    key = next(k for k in teacher if k.endswith("q_proj.weight"))
    expected = 0.75 * before[key] + 0.25 * student[key]  # one step: theta_T <- 0.75 theta_T + 0.25 theta_S
    assert torch.allclose(teacher[key], expected, atol=1e-7) and not torch.equal(teacher[key], before[key])
    assert all(not p.requires_grad for p in ctx.teacher.model.parameters())


def test_resume_restores_the_ema_teacher_bitwise(tmp_path):
    extra = {**RLSD, "trainer.save_freq": 1, "trainer.total_steps": 2}
    run_training(load_config(None, small_overrides(tmp_path, **{**extra, "trainer.run_name": "full"})))
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    shutil.rmtree(part / "checkpoints" / "step_2")
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text(lines[0] + "\n")
    run_training(load_config(None, small_overrides(tmp_path, **{**extra, "trainer.run_name": "part",
                                                                "trainer.resume": "auto"})))
    a = load_file(tmp_path / "full" / "checkpoints" / "step_2" / "model" / "model.safetensors")
    b = load_file(part / "checkpoints" / "step_2" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ta = read_saved(tmp_path / "full" / "checkpoints" / "step_2" / "dcp", "ema_teacher")
    tb = read_saved(part / "checkpoints" / "step_2" / "dcp", "ema_teacher")
    assert ta.keys() == tb.keys() and len(ta) > 40 and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert any(not torch.equal(ta[k], a[k]) for k in a)  # the teacher's own weights, not the student's


@pytest.mark.parametrize("variant", ["sampled", "topk", "hybrid"])
def test_opd_variants(tmp_path, variant):
    extra = {"sampled": {}, "topk": {"actor.policy_loss": "opd_topk", "distill.opd_topk": 8},
             "hybrid": {"algorithm.adv_estimator": "opd_token_plus_grpo", "distill.opd_grpo_weight": 0.5}}[variant]
    cfg = load_config(None, small_overrides(tmp_path, **{**OPD, **extra}))
    run_training(cfg)
    for row in rows_of(cfg):
        assert 0 < row["opd/topk_overlap"] <= 1 and 0 < row["opd/overlap_mass_student"] <= 1.0 + 1e-6
        assert row["opd/entropy_gap"] == pytest.approx(row["opd/entropy_teacher"] - row["opd/entropy_student"])
        assert row["distill/context_frac"] == 1.0  # the external teacher reads the plain prompt
        if variant == "sampled":  # A_t = log pi_T - log pi_S, nothing else
            assert row["adv/mean"] == pytest.approx(row["opd/token_reward_mean"], abs=1e-5)
        if variant == "topk":
            assert "actor/opd/topk_reward_mean" in row


def test_external_teacher_with_another_tokenizer_is_one_line(tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(REPO / "src" / "scirl" / "assets" / "tiny-qwen3", folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    cfg = load_config(None, small_overrides(tmp_path, **{**OPD, "distill.teacher_path": str(folder)}))
    with pytest.raises(ScirlError, match="distill.teacher_path: the teacher's tokenizer differs") as e:
        run_training(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    ({"actor.policy_loss": "rlsd"}, "actor.policy_loss=rlsd needs a teacher: set distill.teacher"),
    ({"distill.teacher": "ema"}, "distill.teacher=ema is unused"),
    ({"algorithm.adv_estimator": "opd_token", "distill.teacher": "external"}, "needs distill.teacher_path"),
    ({"actor.policy_loss": "sdpo", "distill.teacher": "ema", "distill.teacher_context": "none"},
     "teaches nothing"),
    ({**RLSD, "distill.token_reweight_lambda": 1.5}, "distill.token_reweight_lambda=1.5 must be in [0, 1]"),
    ({**RLSD, "distill.teacher_context": "peer_solutoin"}, "Did you mean 'peer_solution'"),
])
def test_bad_distill_configs_fail_at_load(tmp_path, overrides, message):
    with pytest.raises(ScirlError, match=None) as e:
        load_config(None, small_overrides(tmp_path, **overrides))
    assert message in str(e.value)


def test_physics_rlsd_recipe_matches_the_seed():
    cfg = load_config(REPO / "recipes" / "physics_rlsd.yaml")
    d, r, a, act, ds, t = cfg.data, cfg.rollout, cfg.algorithm, cfg.actor, cfg.distill, cfg.trainer
    assert cfg.model.path == "Qwen/Qwen3-4B"
    assert (d.train, d.val) == ("sciknoweval_physics/sdpo_train", "sciknoweval_physics/sdpo_test")
    assert (d.train_batch_size, d.max_prompt_length, r.max_new_tokens) == (256, 2048, 8192)
    assert (r.n, r.temperature, r.top_p, r.val_n, r.val_temperature, r.val_top_p) == (8, 1.0, 1.0, 16, 0.6, 0.95)
    assert (act.policy_loss, act.ppo_mini_batch_size, act.lr, act.warmup_steps, act.weight_decay,
            act.grad_clip) == ("rlsd", 8, 1e-6, 10, 0.01, 1.0)
    assert (a.rollout_correction.rollout_is, a.rollout_correction.rollout_is_threshold) == ("token", 2.0)
    assert (ds.teacher, ds.teacher_update_rate, ds.token_reweight_lambda, ds.token_reweight_eps_w,
            ds.token_reweight_decay_steps, ds.max_reprompt_len) == ("ema", 0.05, 0.5, 0.2, 0, 10240)
    assert (t.total_steps, t.test_freq, t.save_freq) == (100, 10, 10)


@pytest.mark.parametrize("recipe", ["tiny_rlsd", "tiny_sdpo", "tiny_opd"])
def test_tiny_recipes_run(tmp_path, recipe):
    cfg = load_config(REPO / "recipes" / f"{recipe}.yaml", small_overrides(tmp_path))
    summary = run_training(cfg)
    assert summary["steps"] == 2 and summary["skipped_updates"] == 0


def test_frozen_reference_as_the_teacher_never_moves(tmp_path, tiny_model_and_tokenizer):
    from scirl.train.teachers import FrozenReference

    model, tok = tiny_model_and_tokenizer
    cfg = load_config(None, small_overrides(tmp_path, **{**RLSD, "distill.teacher": "reference"}))
    reference = FrozenReference(cfg.model.path, "float32", "cpu", "sdpa", 8, 1.0)
    ctx = step_ctx(tmp_path, tiny_model_and_tokenizer, {**RLSD, "distill.teacher": "reference"})
    ctx.teacher = make_teacher(ctx.cfg, ctx.actor.model, tok, reference, "cpu")
    assert ctx.teacher is reference
    before = {k: v.clone() for k, v in reference.model.state_dict().items()}
    metrics = train_step(ctx)
    assert "actor/rlsd/weight_mean" in metrics
    assert all(torch.equal(before[k], v) for k, v in reference.model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in ctx.actor.model.state_dict().items())
