"""The policy-optimisation toolbox wired into real training steps on the tiny model: KL (loss and reward),
rollout correction, DAPO dynamic sampling / overlong shaping / overlong filtering, ppo_epochs > 1."""

import copy
import json

import pytest
import torch

from conftest import small_overrides
from scirl.config import load_config
from scirl.data.prompts import tokenize_prompts
from scirl.data.synthetic import make_problems
from scirl.errors import ScirlError
from scirl.rewards import REWARDS, RewardPool, RewardResult, register_reward
from scirl.rollout.hf_engine import HFRolloutEngine
from scirl.train import loop as loop_module
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
    real = loop_module.FrozenReference
    monkeypatch.setattr(loop_module, "FrozenReference", lambda *a, **k: built.append(1) or real(*a, **k))
    run_training(load_config(None, small_overrides(tmp_path, **{"trainer.total_steps": 1})))
    assert built == []
    run_training(load_config(None, small_overrides(tmp_path, **{
        "trainer.total_steps": 2, "actor.use_kl_loss": True, "actor.kl_loss_coef": 0.1, "actor.lr": 1e-3})))
    assert built == [1]
    rows = metrics_of(tmp_path)
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
