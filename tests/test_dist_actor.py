"""Data-parallel Actor.update equals one process: the same fixed Trajectories through Actor.update on 1 process and
on 2 gloo processes (FSDP2) give the same parameters (fp32, 1e-6), for token-mean and seq-mean-token-mean, with
several micro-batches per mini-batch and 2 mini-batches; with rank-local normalisers they would not. In the same
launch: the rollout copy equals the trained weights exactly after the weight sync, and the EMA teacher updated on
local shards equals the one-process EMA teacher."""

import os

import pytest
import torch

from conftest import small_overrides, spawn_two_ranks

MODES = ("token-mean", "seq-mean-token-mean")
GROUPS, N = 4, 2  # 4 prompt groups x 2 samples; mini-batch 2 groups -> 2 optimizer steps; micro-batch 1 row


def _cfg(tmp, mode):
    from scirl.config import load_config

    return load_config(None, small_overrides(tmp, **{
        "data.train_batch_size": GROUPS, "actor.ppo_mini_batch_size": 2, "actor.ppo_micro_batch_size": 1,
        "rollout.n": N, "actor.loss_agg_mode": mode, "actor.lr": 2e-5, "actor.grad_clip": 100.0,
        "trainer.progress": False}))


def _fixed_batch():
    """8 rows (4 groups x 2) with very unequal response lengths: rank 1's share has far more tokens than rank 0's."""
    from scirl.rollout.base import Trajectories

    g = torch.Generator().manual_seed(0)
    B, P, R = GROUPS * N, 5, 7
    prompts = torch.randint(3, 500, (GROUPS, P), generator=g).repeat_interleave(N, 0)
    lengths = torch.tensor([1, 2, 7, 7, 2, 1, 7, 6])  # rank 0 (groups 0, 2): 1+2+2+1; rank 1 (groups 1, 3): 7+7+7+6
    mask = (torch.arange(R)[None] < lengths[:, None]).float()
    traj = Trajectories(prompt_ids=prompts, prompt_mask=torch.ones(B, P, dtype=torch.long),
                        response_ids=torch.randint(3, 500, (B, R), generator=g), response_mask=mask,
                        rollout_logprobs=torch.zeros(B, R), uid=[str(i // N) for i in range(B)],
                        sample_index=[i % N for i in range(B)], truncated=torch.zeros(B, dtype=torch.bool))
    advantages = torch.randn(B, R, generator=g) * mask
    return traj, advantages


def _rows_of_rank(rank, world):
    from scirl.dist import rank_groups

    return [gi * N + j for gi in rank_groups(GROUPS, 2, rank, world) for j in range(N)]


def _train(model, cfg, traj, adv):
    from scirl.train.actor import Actor

    actor = Actor(model, cfg)
    metrics = actor.update(traj, adv)
    return actor, metrics


def _worker(rank, world, port, tmp, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import copy

    import scirl.train.actor as actor_module
    from scirl import dist
    from scirl.rollout.hf_engine import HFRolloutEngine
    from scirl.train.fsdp import full_state_dict, shard_model
    from scirl.train.model_loading import load_model_and_tokenizer
    from scirl.train.teachers import EMATeacher

    dist.init_from_env()
    traj, adv = _fixed_batch()
    rows = _rows_of_rank(rank, world)
    mine, my_adv = traj.select(rows), adv[rows]
    results = {}
    for mode in MODES + ("local-normaliser",):
        cfg = _cfg(tmp, "token-mean" if mode == "local-normaliser" else mode)
        torch.manual_seed(0)
        model, tok = load_model_and_tokenizer("builtin:tiny-qwen3")
        rollout = copy.deepcopy(model)
        teacher = EMATeacher(model, 2, 1.0)
        shard_model(model, cfg.actor.fsdp, "cpu")
        shard_model(teacher.model, cfg.actor.fsdp, "cpu")
        reduce = actor_module.dist.all_reduce_sum
        if mode == "local-normaliser":  # the bug the test guards against: each rank normalises by its own counts
            actor_module.dist.all_reduce_sum = lambda t: t
        try:
            actor, metrics = _train(model, cfg, mine, my_adv)
        finally:
            actor_module.dist.all_reduce_sum = reduce
        teacher.update(model, 0.25)
        engine = HFRolloutEngine(rollout, tok, shares_module=False)
        engine.update_weights(actor.rollout_weights())  # the weight-sync point
        trained = full_state_dict(model)
        synced = all(torch.equal(p, trained[n]) for n, p in rollout.named_parameters())
        ema = full_state_dict(teacher.model)
        if rank == 0:
            results[mode] = {"params": trained, "metrics": metrics, "synced": synced, "ema": ema}
    if rank == 0:
        torch.save(results, out)
    dist.destroy()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist_actor")
    out = tmp / "results.pt"
    return spawn_two_ranks(_worker, tmp, out)


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_update_equals_one_process(mode, two_rank_results, tmp_path):
    from scirl.train.model_loading import load_model_and_tokenizer
    from scirl.train.teachers import EMATeacher

    traj, adv = _fixed_batch()
    # one process trains on the rows in the order the ranks' shares make up each mini-batch
    order = [r for m in range(2) for rank in range(2) for r in _rows_of_rank(rank, 2)[m * N:(m + 1) * N]]
    model, _ = load_model_and_tokenizer("builtin:tiny-qwen3")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    teacher = EMATeacher(model, 2, 1.0)
    _, metrics = _train(model, _cfg(tmp_path, mode), traj.select(order), adv[order])
    teacher.update(model, 0.25)
    two = two_rank_results[mode]
    one = model.state_dict()
    assert metrics["actor/applied_updates"] == two["metrics"]["actor/applied_updates"] == 2
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    assert moved > 2e-5  # the update did something
    worst = max(float((one[k] - two["params"][k]).abs().max()) for k in one)
    assert worst < 1e-6, worst
    assert max(float((teacher.model.state_dict()[k] - two["ema"][k]).abs().max()) for k in one) < 1e-6
    # the gradient itself does not depend on the world size (FSDP's averaging over ranks is cancelled)
    assert two["metrics"]["actor/grad_norm"] == pytest.approx(metrics["actor/grad_norm"], rel=1e-5)
    assert two["metrics"]["actor/pg_loss"] == pytest.approx(metrics["actor/pg_loss"], rel=1e-5, abs=1e-7)
    assert two["synced"]  # after the sync the rollout weights equal the trained weights exactly
    if mode == "token-mean":  # rank-local normalisers would weight the ranks' tokens differently: visibly off
        local = two_rank_results["local-normaliser"]
        assert max(float((one[k] - local["params"][k]).abs().max()) for k in one) > 1e-5  # 100x the tolerance
        assert local["metrics"]["actor/grad_norm"] != pytest.approx(metrics["actor/grad_norm"], rel=1e-2)
