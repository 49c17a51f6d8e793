"""The policy-optimisation toolbox wired into real training steps on the tiny model: KL (loss and reward),
rollout correction, DAPO dynamic sampling / overlong shaping / overlong filtering, ppo_epochs > 1."""

import copy
import math
import json

import pytest
import torch

from conftest import small_overrides
from scirl.config import load_config
from scirl.data.prompts import tokenize_prompts
from scirl.data.synthetic import make_problems
from scirl.algos import get_policy_loss
from scirl.errors import ScirlError
from scirl.rewards import REWARDS, RewardPool, RewardResult, register_reward
from scirl.rollout.hf_engine import HFRolloutEngine
from scirl.train import build as build_module  # where the run is built (the reference among it)
from scirl.train.actor import Actor
from scirl.train.loop import run_training
from scirl.train.rollout_batch import collect_batch
from scirl.train.step import StepContext, loss_mask_and_is_weights


@register_reward("always_zero_for_test")
def always_zero(sample, completion, info):
    return RewardResult(0.0, {"acc": 0.0}, None)


def metrics_of(tmp_path, name="t"):
    return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def make_ctx(tmp_path, tiny, overrides, reward="boxed_numeric"):
    model, tok = tiny
    model = copy.deepcopy(model)  # these tests train: keep the shared fixture pristine
    cfg = load_config(None, small_overrides(tmp_path, **overrides))
    samples, ids, _ = tokenize_prompts(make_problems("train", 32, seed=4), tok, 256, True, "x")
    state = {"i": 0}

    def next_prompts():
        i = state["i"]
        state["i"] += cfg.data.train_batch_size
        return samples[i: i + cfg.data.train_batch_size], ids[i: i + cfg.data.train_batch_size]

    pool = RewardPool(reward, workers=0)
    return StepContext(cfg, Actor(model, cfg), HFRolloutEngine(model, tok), pool, next_prompts)


def test_reference_model_is_loaded_only_when_a_kl_term_needs_it(tmp_path, monkeypatch):
    built = []
    real = build_module.FrozenReference
    monkeypatch.setattr(build_module, "FrozenReference", lambda *a, **k: built.append(1) or real(*a, **k))
    run_training(load_config(None, small_overrides(tmp_path, **{"trainer.total_steps": 1})))
    assert built == []
    run_training(load_config(None, small_overrides(tmp_path, **{
        "trainer.total_steps": 2, "actor.use_kl_loss": True, "actor.kl_loss_coef": 0.1, "actor.lr": 1e-3,
        "trainer.run_name": "kl"})))
    assert built == [1]
    rows = metrics_of(tmp_path, "kl")
    assert rows[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert rows[1]["actor/kl_loss"] > 1e-6  # after one update the policy has moved away


def test_kl_in_reward_with_adaptive_controller(tmp_path):
    run_training(load_config(None, small_overrides(tmp_path, **{
        "trainer.total_steps": 3, "algorithm.use_kl_in_reward": True, "algorithm.kl_ctrl.type": "adaptive",
        "algorithm.kl_ctrl.kl_coef": 0.05, "algorithm.kl_ctrl.target_kl": 0.01, "algorithm.kl_ctrl.horizon": 10,
        "actor.lr": 1e-3})))
    rows = metrics_of(tmp_path)
    assert rows[0]["reward/kl"] == pytest.approx(0.0, abs=1e-6) and rows[0]["reward/kl_coef"] == 0.05
    assert rows[2]["reward/kl"] > 0
    assert rows[2]["reward/kl_coef"] != 0.05  # the adaptive controller moved beta


def test_rollout_correction_metrics_on_policy(tmp_path, tiny_model_and_tokenizer):
    ctx = make_ctx(tmp_path, tiny_model_and_tokenizer, {
        "algorithm.rollout_correction.rollout_is": "token", "algorithm.rollout_correction.rollout_rs": "token_k1"})
    from scirl.train.step import train_step

    metrics = train_step(ctx)
    # sampling and training use the same weights: the weights are ~1, nothing truncated, nothing rejected
    assert metrics["rollout_is/mean"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["rollout_is/truncated_frac"] == 0.0
    assert metrics["rollout_rs/masked_frac"] == 0.0


def test_overlong_filtering_masks_truncated_rows(tmp_path, tiny_model_and_tokenizer):
    ctx = make_ctx(tmp_path, tiny_model_and_tokenizer, {"rollout.max_new_tokens": 20,
                                                         "algorithm.overlong_filtering": True})
    batch = collect_batch(ctx)
    metrics = {}
    mask, weights = loss_mask_and_is_weights(ctx.cfg, batch.traj, None, metrics)
    truncated = batch.traj.truncated
    assert truncated.any() and (~truncated).any()
    assert mask[truncated].sum() == 0
    assert torch.equal(mask[~truncated], batch.traj.response_mask[~truncated]) and weights is None


def test_overlong_shaping_lowers_scores(tmp_path, tiny_model_and_tokenizer):
    ctx = make_ctx(tmp_path, tiny_model_and_tokenizer, {
        "reward.overlong_buffer.enable": True, "reward.overlong_buffer.len": 40, "rollout.max_new_tokens": 40})
    batch = collect_batch(ctx)
    # soft limit 0: every response of length L is penalised by L/40
    expected = batch.acc - batch.traj.response_lengths / 40
    assert torch.allclose(batch.scores, expected, atol=1e-6)
    assert batch.metrics["reward/overlong_penalty_mean"] < 0


def test_dynamic_sampling_keeps_exactly_the_batch_of_mixed_groups(tmp_path, tiny_model_and_tokenizer):
    ctx = make_ctx(tmp_path, tiny_model_and_tokenizer, {"algorithm.filter_groups.enable": True,
                                                         "algorithm.filter_groups.max_num_gen_batches": 8})
    batch = collect_batch(ctx)
    assert len(batch.traj) == 4 * 4
    groups = {}
    for uid, a in zip(batch.traj.uid, batch.acc.tolist()):
        groups.setdefault(uid, []).append(a)
    assert len(groups) == 4 and all(len(set(g)) > 1 for g in groups.values())
    assert batch.metrics["dapo/num_gen_batches"] >= 1


def test_dynamic_sampling_gives_up_after_max_num_gen_batches(tmp_path, tiny_model_and_tokenizer):
    ctx = make_ctx(tmp_path, tiny_model_and_tokenizer, {"algorithm.filter_groups.enable": True,
                                                         "algorithm.filter_groups.max_num_gen_batches": 2},
                   reward="always_zero_for_test")
    with pytest.raises(ScirlError, match="max_num_gen_batches=2"):
        collect_batch(ctx)


def test_later_ppo_epochs_see_a_ratio_away_from_one(tmp_path, tiny_model_and_tokenizer):
    from scirl.train.step import train_step

    one = train_step(make_ctx(tmp_path, tiny_model_and_tokenizer, {"actor.lr": 1e-2}))
    assert one["actor/ppo_kl"] == 0.0 and one["actor/pg_clipfrac"] == 0.0  # lp_old = sg(lp): ratio exactly 1
    two = train_step(make_ctx(tmp_path, tiny_model_and_tokenizer, {"actor.lr": 1e-2, "actor.ppo_epochs": 2}))
    assert abs(two["actor/ppo_kl"]) > 1e-6  # the second epoch runs on moved weights against the recomputed lp_old
    assert two["actor/pg_clipfrac"] > 0.0


@pytest.mark.parametrize("override, message", [
    (["actor.kl_loss_type=k5"], "actor.kl_loss_type"),
    (["actor.use_kl_loss=true", "algorithm.use_kl_in_reward=true"], "both on"),
    (["algorithm.clip_ratio_c=0.9"], "clip_ratio_c"),
    (["algorithm.rollout_correction.rollout_is=tokens"], "rollout_is"),
    (["algorithm.rollout_correction.rollout_rs=seq_sum_k9"], "rollout_rs"),
    (["algorithm.filter_groups.metric=accuracy"], "filter_groups.metric"),
    (["reward.overlong_buffer.enable=true", "reward.overlong_buffer.len=100"], "overlong_buffer.len"),
    (["algorithm.adv_estimator=rloo", "rollout.n=1"], "rollout.n"),
    (["actor.loss_agg_mode=seq-mean-token-sum-norm-paper"], "was removed"),
    (["algorithm.rollout_correction.rollout_rs=token_k1,seq_sum_k9"], "rollout_rs"),
    (["algorithm.rollout_correction.rollout_rs=token_k1,seq_mean_k3",
      "algorithm.rollout_correction.rollout_rs_threshold='2.0,0.1,0.3'"], "3 entries for 2 kinds"),
    (["algorithm.rollout_correction.rollout_rs=seq_mean_k3",
      "algorithm.rollout_correction.rollout_rs_threshold=0.5_2.0"], "rollout_rs_threshold"),
    (["algorithm.rollout_correction.rollout_is=token", "algorithm.rollout_correction.rollout_is_threshold=0.5_2.0",
      "algorithm.rollout_correction.rollout_is_threshold_lower=0.5"], "already has a lower bound"),
    (["algorithm.rollout_correction.rollout_is=token", "algorithm.rollout_correction.rollout_is_threshold=0"],
     "rollout_is_threshold"),
    (["algorithm.rollout_correction.rollout_is_batch_normalize=true"], "set rollout_is"),
    (["actor.policy_loss=dro"], "dro_beta"),
    (["actor.policy_loss=sapo", "actor.loss_agg_mode=seq-mean-token-mean",
      "actor.policy_loss_kwargs.tau_neg=0"], "tau_neg"),
    (["actor.policy_loss=clip_cov", "actor.policy_loss_kwargs.clip_cov_lb=6"], "clip_cov_lb"),
])
def test_bad_combinations_fail_clearly(override, message):
    with pytest.raises(ScirlError, match=message):
        load_config(None, override)


def teardown_module(module):
    REWARDS.pop("always_zero_for_test", None)


def test_entropy_bonus_enters_the_gradient(tmp_path, tiny_model_and_tokenizer):
    ctx = make_ctx(tmp_path, tiny_model_and_tokenizer, {"actor.lr": 0.0})
    batch = collect_batch(ctx)
    zero_adv = torch.zeros_like(batch.traj.response_mask)
    grads = {}
    for coeff in (0.0, 0.1):
        ctx.cfg.actor.entropy_coeff = coeff
        metrics = ctx.actor.update(batch.traj, zero_adv)  # lr 0: weights stay, gradients stay for inspection
        grads[coeff] = torch.cat([p.grad.flatten() for p in ctx.actor.params if p.grad is not None])
        assert metrics["actor/entropy"] > 0
    assert grads[0.0].abs().max() == 0  # zero advantages and no bonus: nothing to learn
    assert grads[0.1].abs().max() > 1e-6


def test_every_bundled_recipe_loads():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
    assert {"tiny_grpo.yaml", "tiny_dapo.yaml", "tiny_gspo.yaml"} <= {r.name for r in recipes}
    for recipe in recipes:
        cfg = load_config(recipe)
        assert cfg.trainer.run_name == recipe.stem
    dapo = load_config(recipes[[r.name for r in recipes].index("tiny_dapo.yaml")])
    assert dapo.algorithm.filter_groups.enable and dapo.reward.overlong_buffer.enable
    assert dapo.algorithm.clip_ratio_high == 0.28 and dapo.actor.loss_agg_mode == "token-mean"


# ---------------------------------------------------------------- parity with current verl (policy losses, agg)


@pytest.mark.parametrize("loss, mode", [("gspo", "token-mean"), ("sapo", "seq-mean-token-sum"),
                                        ("geo_mean", "seq-mean-token-sum-norm")])
def test_losses_verl_aggregates_one_way_reject_other_modes(loss, mode):
    with pytest.raises(ScirlError) as e:
        load_config(None, [f"actor.policy_loss={loss}", f"actor.loss_agg_mode={mode}"])
    msg = str(e.value)
    assert f"verl always aggregates {loss} with seq-mean-token-mean" in msg
    assert "set actor.loss_agg_mode=seq-mean-token-mean" in msg and "\n" not in msg
    cfg = load_config(None, [f"actor.policy_loss={loss}", "actor.loss_agg_mode=seq-mean-token-mean"])
    assert cfg.actor.policy_loss == loss


def test_gspo_recipe_still_loads():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "recipes" / "tiny_gspo.yaml")
    assert (cfg.actor.policy_loss, cfg.actor.loss_agg_mode) == ("gspo", "seq-mean-token-mean")


def _lr0_grads(ctx, traj, adv, loss_mask=None):
    ctx.actor.update(traj, adv, loss_mask=loss_mask)  # lr 0: the weights stay and the gradients stay to inspect
    return torch.cat([p.grad.flatten() for p in ctx.actor.params if p.grad is not None])


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_a_fully_masked_row_does_not_change_the_update(tmp_path, tiny_model_and_tokenizer, mode):
    """The actor's global sequence count ignores rows with no loss token (e.g. all rejected): a 16-row batch whose
    last row is fully masked gives the gradient of the 15 other rows (a count of 16 would scale it by 15/16)."""
    ctx = make_ctx(tmp_path, tiny_model_and_tokenizer, {"actor.lr": 0.0, "actor.grad_clip": 1e9,
                                                        "actor.loss_agg_mode": mode})
    traj = collect_batch(ctx).traj
    assert len(traj) == 16 and ctx.actor.cfg.actor.ppo_mini_batch_size * ctx.cfg.rollout.n == 16
    adv = torch.linspace(-1.0, 1.2, len(traj))[:, None] * traj.response_mask
    mask = traj.response_mask.clone()
    mask[-1] = 0.0
    with_row = _lr0_grads(ctx, traj, adv, mask)
    rows = list(range(15))
    without = _lr0_grads(ctx, traj.select(rows), adv[:15], mask[:15])
    assert with_row.abs().max() > 1e-6
    assert torch.allclose(with_row, without, rtol=1e-4, atol=1e-7)


def test_policy_loss_kwargs_reach_the_loss(tmp_path, tiny_model_and_tokenizer):
    """SAPO on-policy: the token loss is -A * 2 / tau, so doubling actor.policy_loss_kwargs.tau_pos / tau_neg halves
    the logged pg_loss exactly (and the gradient, whose slope at rho = 1 is 1, stays)."""
    base = {"actor.lr": 0.0, "actor.grad_clip": 1e9, "actor.policy_loss": "sapo",
            "actor.loss_agg_mode": "seq-mean-token-mean"}
    ctx = make_ctx(tmp_path, tiny_model_and_tokenizer, base)
    traj = collect_batch(ctx).traj
    adv = torch.linspace(-1.0, 1.2, len(traj))[:, None] * traj.response_mask
    out = {}
    for tau in (1.0, 2.0):
        cfg = load_config(None, small_overrides(tmp_path, **base, **{"actor.policy_loss_kwargs.tau_pos": tau,
                                                                     "actor.policy_loss_kwargs.tau_neg": tau}))
        actor = Actor(ctx.actor.model, cfg)
        assert actor.loss_kwargs == {"tau_pos": tau, "tau_neg": tau}
        metrics = actor.update(traj, adv)
        out[tau] = (metrics["actor/pg_loss"], torch.cat([p.grad.flatten() for p in actor.params]))
    assert abs(out[1.0][0]) > 1e-4
    assert out[2.0][0] == pytest.approx(out[1.0][0] / 2, rel=1e-5)
    assert torch.allclose(out[2.0][1], out[1.0][1], rtol=1e-4, atol=1e-7)


def test_rollout_correction_wiring_icepop_batch_norm_and_a_chain():
    """loss_mask_and_is_weights: IcePop weights and both RS kinds are computed on the mask before rejection (as
    verl), the chain ANDs the kinds, and the batch normaliser is the mean over those pre-rejection tokens."""
    from types import SimpleNamespace

    cfg = load_config(None, ["algorithm.rollout_correction.rollout_is=token",
                             "algorithm.rollout_correction.rollout_is_threshold=0.5_2.0",
                             "algorithm.rollout_correction.rollout_is_batch_normalize=true",
                             "algorithm.rollout_correction.rollout_rs=token_k1,seq_mean_k1",
                             "algorithm.rollout_correction.rollout_rs_threshold='2.0,1.3'"])
    response_mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    log_ratio = torch.tensor([[0.9, 0.3, 0.0, 0.1], [-0.9, 0.2, 0.1, 4.0]])  # lp_old - lp_roll
    old = torch.full((2, 4), -1.0)
    traj = SimpleNamespace(response_mask=response_mask, truncated=torch.zeros(2, dtype=torch.bool),
                           rollout_logprobs=old - log_ratio)
    metrics = {}
    mask, w = loss_mask_and_is_weights(cfg, traj, old, metrics)
    # token_k1 (ratio in [1/2, 2]) drops the two |r| = 0.9 tokens; seq_mean_k1 (mean -r in +-log 1.3 = +-0.262)
    # drops row 0 (-0.325) and keeps row 1 (+0.2)
    assert torch.equal(mask, torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]))
    raw = [0.0, math.exp(0.3), 1.0, math.exp(0.1), 0.0, math.exp(0.2), math.exp(0.1)]  # IcePop: e^0.9, e^-0.9 -> 0
    factor = sum(raw) / 7  # the mean over the 7 pre-rejection tokens = 0.825943
    assert factor == pytest.approx(0.825943, abs=1e-6)
    assert metrics["rollout_is/batch_norm_factor"] == pytest.approx(factor)
    expected = torch.tensor([raw[:4], raw[4:] + [0.0]]) / factor
    assert torch.allclose(w, expected, atol=1e-6)
    assert metrics["rollout_is/oob_frac"] == pytest.approx(2 / 7)
    assert metrics["rollout_is/mean"] == pytest.approx(factor)  # logged before the rescaling, as verl
    assert metrics["rollout_rs/masked_frac"] == pytest.approx(5 / 7)
    assert metrics["rollout_rs/token_k1/masked_frac"] == pytest.approx(2 / 7)
    assert metrics["rollout_rs/seq_mean_k1/masked_frac"] == pytest.approx(4 / 7)


def _with_teacher(tmp_path, tiny, overrides):
    from scirl.train.distill import make_teacher

    ctx = make_ctx(tmp_path, tiny, {"distill.teacher": "ema", "distill.max_reprompt_len": 200, **overrides})
    ctx.teacher = make_teacher(ctx.cfg, ctx.actor.model, tiny[1], None, "cpu")
    ctx.tokenizer = tiny[1]
    seen = {}
    real_update = ctx.actor.update

    def spy(traj, adv, old, ref, is_weights, loss_mask, teacher, step):
        seen.update(traj=traj, adv=adv.clone(), mask=loss_mask.clone(), teacher=teacher,
                    student=ctx.actor.logprobs(traj))  # one mini-batch, one epoch: s = these log-probs
        return real_update(traj, adv, old, ref, is_weights, loss_mask, teacher, step)

    ctx.actor.update = spy
    return ctx, seen


def test_sdpo_loss_covers_exactly_the_rows_with_a_teacher_context(tmp_path, tiny_model_and_tokenizer):
    from scirl.train.step import train_step

    torch.manual_seed(0)
    ctx, seen = _with_teacher(tmp_path, tiny_model_and_tokenizer, {"actor.policy_loss": "sdpo", "actor.lr": 1e-3})
    metrics = train_step(ctx)
    has = seen["teacher"].mask
    assert has.any() and (~has).any(), "the fixed seed must give rows with and without a peer solution"
    assert seen["mask"][~has].sum() == 0  # rows without a context leave the loss and its denominator
    assert torch.equal(seen["mask"][has], seen["traj"].response_mask[has])
    # on-policy (rho = 1, no rollout IS): the token-mean over context tokens is the mean divergence there
    assert metrics["actor/pg_loss"] == pytest.approx(metrics["actor/sdpo/divergence"], rel=1e-5)


def test_rlsd_weight_mean_is_the_teachers_reweighting(tmp_path, tiny_model_and_tokenizer):
    """actor/rlsd/weight_mean equals clip(exp(sign(A) (tau - s)), 0.8, 1.2) averaged by hand over the response
    tokens of the rows with a context, from the teacher's log-probs and the student's (one micro-batch)."""
    from scirl.train.step import train_step

    torch.manual_seed(0)
    ctx, seen = _with_teacher(tmp_path, tiny_model_and_tokenizer, {"actor.policy_loss": "rlsd",
                                                                   "actor.ppo_micro_batch_size": 16})
    metrics = train_step(ctx)
    teacher = seen["teacher"]
    rows = teacher.mask[:, None] & (seen["mask"] != 0)
    assert rows.any()
    w = torch.exp(torch.sign(seen["adv"]) * (teacher.logprobs - seen["student"])).clamp(0.8, 1.2)
    expected = float(w[rows].mean())
    assert abs(expected - 1.0) > 1e-3  # the teacher does move the weights
    assert metrics["actor/rlsd/weight_mean"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("loss", ["sapo", "geo_mean", "gpg", "dro", "dppo_tv", "dppo_kl", "clip_cov", "kl_cov"])
def test_each_verl_loss_trains_a_step(tmp_path, tiny_model_and_tokenizer, loss):
    from scirl.train.step import train_step

    torch.manual_seed(0)
    mode = get_policy_loss(loss).agg_mode or "token-mean"
    ctx = make_ctx(tmp_path, tiny_model_and_tokenizer, {
        "actor.policy_loss": loss, "actor.loss_agg_mode": mode, "actor.policy_loss_kwargs.dro_beta": 0.1,
        "actor.lr": 1e-3, "actor.ppo_mini_batch_size": 2})
    before = [p.detach().clone() for p in ctx.actor.params]
    metrics = train_step(ctx)  # two mini-batches: the second sees a ratio away from 1
    assert metrics["adv/std"] > 0, "the fixed seed must give a group with a reward spread"
    assert metrics["actor/applied_updates"] == 2 and math.isfinite(metrics["actor/pg_loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, ctx.actor.params))
