"""LoRA under FSDP2 on 2 gloo processes, one spawned launch, fixed Trajectories: the ranks start from rank 0's
adapter init (the one-process run's, though each rank seeded its generators apart), Actor.update of the sharded
PeftModel (frozen base and trainable adapter in the same FSDP units) gives the same adapter as one process (fp32,
1e-6) with only the adapter moved, the adapter-disabled reference on the sharded module equals the base model's
log-probs, and the plain rollout copy loaded with Actor.rollout_weights (merged weights, plain names) scores the
batch like the sharded policy. In one process the pushed weights (an engine with weights of its own) are peft's
merge_and_unload state."""

import copy
import os

import pytest
import torch

from conftest import small_overrides, spawn_two_ranks

GROUPS, N = 4, 2  # 4 prompt groups x 2 samples; mini-batch 2 groups -> 2 optimizer steps; micro-batch 1 row
LORA = {"model.lora.rank": 4, "model.lora.alpha": 8, "model.lora.target_modules": "[q_proj,v_proj,down_proj]"}


def _cfg(tmp):
    from scirl.config import load_config

    return load_config(None, small_overrides(tmp, **{
        **LORA, "data.train_batch_size": GROUPS, "actor.ppo_mini_batch_size": 2, "actor.ppo_micro_batch_size": 1,
        "rollout.n": N, "actor.lr": 5e-3, "actor.grad_clip": 100.0}))


def _fixed_batch():
    from scirl.rollout.base import Trajectories

    g = torch.Generator().manual_seed(0)
    B, P, R = GROUPS * N, 5, 7
    prompts = torch.randint(3, 500, (GROUPS, P), generator=g).repeat_interleave(N, 0)
    lengths = torch.tensor([1, 2, 7, 7, 2, 1, 7, 6])
    mask = (torch.arange(R)[None] < lengths[:, None]).float()
    traj = Trajectories(prompt_ids=prompts, prompt_mask=torch.ones(B, P, dtype=torch.long),
                        response_ids=torch.randint(3, 500, (B, R), generator=g), response_mask=mask,
                        rollout_logprobs=torch.zeros(B, R), uid=[str(i // N) for i in range(B)],
                        sample_index=[i % N for i in range(B)], truncated=torch.zeros(B, dtype=torch.bool))
    return traj, torch.randn(B, R, generator=g) * mask


def _rows_of_rank(rank, world):
    from scirl.dist import rank_groups

    return [gi * N + j for gi in rank_groups(GROUPS, 2, rank, world) for j in range(N)]


def _peft(cfg, seed):
    from scirl.train.lora import apply_lora
    from scirl.train.model_loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("builtin:tiny-qwen3")
    torch.manual_seed(seed)  # the adapter's lora_A init draws from the global generator
    return apply_lora(model, cfg.model.lora), tok


def _worker(rank, world, port, tmp, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from scirl import dist
    from scirl.rollout.hf_engine import HFRolloutEngine
    from scirl.train.actor import Actor
    from scirl.train.fsdp import full_state_dict, shard_model
    from scirl.train.logprobs import batched_logprobs
    from scirl.train.lora import AdapterDisabledReference, same_adapter_on_all_ranks

    dist.init_from_env()
    cfg = _cfg(tmp)
    traj, adv = _fixed_batch()
    rows = _rows_of_rank(rank, world)
    model, tok = _peft(cfg, seed=1000 + rank)  # seeded apart, as the trainer seeds its ranks
    drawn = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    same_adapter_on_all_ranks(model)
    own_draw_kept = all(torch.equal(p, drawn[n]) for n, p in model.named_parameters() if n in drawn)
    rollout = copy.deepcopy(model).eval().requires_grad_(False).merge_and_unload()  # as build_run makes it
    shard_model(model, cfg.actor.fsdp, "cpu")
    start = full_state_dict(model)
    reference = AdapterDisabledReference(model, 1, 1.0)
    actor = Actor(model, cfg)
    metrics = actor.update(traj.select(rows), adv[rows])
    ref_lp = reference.logprobs(traj)  # after the update: the adapter is live, the reference must not see it
    engine = HFRolloutEngine(rollout, tok, shares_module=False)
    weights = actor.rollout_weights()
    engine.update_weights(weights)
    policy_lp = actor.logprobs(traj)
    rollout_lp = batched_logprobs(rollout, traj, 8, 1.0)
    result = {"start": start, "trained": full_state_dict(model), "metrics": metrics, "ref_lp": ref_lp,
              "policy_lp": policy_lp, "rollout_lp": rollout_lp, "weight_names": sorted(weights),
              "own_draw_kept": own_draw_kept}
    results = dist.all_gather_object(result)
    if rank == 0:
        torch.save(results, out)
    dist.destroy()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_dist_actor")
    out = tmp / "results.pt"
    return spawn_two_ranks(_worker, tmp, out)


def test_lora_update_on_two_ranks_equals_one_process(two_ranks, tmp_path):
    from scirl.train.actor import Actor
    from scirl.train.logprobs import batched_logprobs
    from scirl.train.model_loading import load_model_and_tokenizer

    r0, r1 = two_ranks
    cfg = _cfg(tmp_path)
    traj, adv = _fixed_batch()
    # the ranks start from rank 0's draw on both: the one-process run's adapter (seed 1000)
    model, _ = _peft(cfg, seed=1000)
    one_start = {k: v.clone() for k, v in model.state_dict().items()}
    assert one_start.keys() == r0["start"].keys() == r1["start"].keys()
    assert all(torch.equal(one_start[k], r0["start"][k]) and torch.equal(one_start[k], r1["start"][k])
               for k in one_start)
    assert not r1["own_draw_kept"]  # rank 1's own draw (seed 1001) was replaced
    order = [r for m in range(2) for rank in range(2) for r in _rows_of_rank(rank, 2)[m * N:(m + 1) * N]]
    metrics = Actor(model, cfg).update(traj.select(order), adv[order])
    one = model.state_dict()
    moved = {k: float((one[k] - one_start[k]).abs().max()) for k in one}
    assert all(moved[k] > 1e-4 for k in one if "lora_B" in k)  # every adapter trained...
    assert all(moved[k] == 0 for k in one if "lora_" not in k)  # ...and nothing else
    # Adam divides by sqrt(v): an element whose step-2 gradient is ~0 turns summation-order noise into a visible
    # step. Measured: 1 element of 18,432 off by 2.5e-5 (0.5% of lr), every other one within 5e-7
    diffs = torch.cat([(one[k] - r[k]).abs().flatten() for r in (r0["trained"], r1["trained"]) for k in one])
    assert float(diffs.max()) < 0.02 * cfg.actor.lr, float(diffs.max())
    assert int((diffs > 1e-6).sum()) <= 4, int((diffs > 1e-6).sum())
    mask = traj.response_mask.bool()
    one_lp = batched_logprobs(model, traj, 8, 1.0)  # the trained policies agree as functions
    for r in (r0, r1):
        assert float((r["policy_lp"] - one_lp)[mask].abs().max()) < 1e-5
    assert r0["metrics"]["actor/applied_updates"] == metrics["actor/applied_updates"] == 2
    assert r0["metrics"]["actor/grad_norm"] == pytest.approx(metrics["actor/grad_norm"], rel=1e-5)
    assert r0["metrics"]["actor/pg_loss"] == pytest.approx(metrics["actor/pg_loss"], rel=1e-5, abs=1e-7)
    # the adapter-disabled reference on the sharded module is the base model
    base, _ = load_model_and_tokenizer("builtin:tiny-qwen3")
    base_lp = batched_logprobs(base, traj, 8, 1.0)
    for r in (r0, r1):
        assert float((r["ref_lp"] - base_lp)[mask].abs().max()) < 1e-5
        assert float((r["policy_lp"] - base_lp)[mask].abs().max()) > 1e-3  # while the policy has moved off it


def test_the_merged_rollout_copy_scores_like_the_sharded_policy(two_ranks):
    for r in two_ranks:
        assert not any("lora_" in k or k.startswith("base_model.") or ".base_layer." in k for k in r["weight_names"])
        mask = torch.ones_like(r["policy_lp"], dtype=torch.bool)
        diff = float((r["rollout_lp"] - r["policy_lp"])[mask].abs().max())
        assert diff < 1e-5, diff


def test_one_process_pushes_the_merged_plain_weights(tmp_path):
    from scirl.train.actor import Actor

    cfg = _cfg(tmp_path)
    model, _ = _peft(cfg, seed=0)
    actor = Actor(model, cfg)
    traj, adv = _fixed_batch()
    actor.update(traj, adv)
    assert actor.rollout_weights() is None  # the hf engine samples this very module: nothing to push
    actor.push_weights = True  # an engine with weights of its own (vLLM, openai server)
    pushed = actor.rollout_weights()
    plain = copy.deepcopy(model).merge_and_unload().state_dict()  # peft's own merge
    assert pushed.keys() == plain.keys()
    assert max(float((pushed[k] - plain[k]).abs().max()) for k in plain) < 1e-6
    base = load_base_state()
    moved = [k for k in plain if float((pushed[k] - base[k]).abs().max()) > 1e-5]
    assert moved and all(k.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight")) for k in moved)


def load_base_state():
    from scirl.train.model_loading import load_model_and_tokenizer

    return load_model_and_tokenizer("builtin:tiny-qwen3")[0].state_dict()
