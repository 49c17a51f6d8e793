"""rollout.agent on 2 ranks (gloo, FSDP2, spawned processes running the trainer): a scripted engine calls the
calculator on rank 0's rows only (sample 0 of a group a good call, sample 2 one that fails), so the ranks' agent
metrics differ and the logged ones must be the reduction over both: calls per row 0.25 (mean over ranks), error
rate 0.5 (per call: rank 1's zero calls do not pull it to 0.25); the validation block gathers both ranks' rows.
Then 2 steps + a 2-rank resume of 1 equal 3 steps straight (metrics and weights)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch

from conftest import free_port, small_overrides, spawn_two_ranks
from scirl.rollout.hf_engine import HFRolloutEngine
from test_agent_training import AGENT, CALL, ScriptedToolEngine

BAD_CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1/0"}}\n</tool_call>'
EXTRA = {**AGENT, "data.train_batch_size": 4, "actor.ppo_mini_batch_size": 2, "actor.ppo_micro_batch_size": 4,
         "rollout.n": 4, "rollout.val_n": 4, "data.val_size": 2, "rollout.max_new_tokens": 128,
         "rollout.agent.max_response_len": 400, "trainer.total_steps": 3, "trainer.save_freq": 1,
         "trainer.test_freq": 0, "trainer.num_threads": 1, "actor.lr": 1e-3,
         "reward.name": "tests/helpers/agent_info_reward.py:score"}  # scores vary in a group: the weights move


class RankScriptedEngine(ScriptedToolEngine):
    """Rank 0's rows call the calculator (samples 0 and 2 of a group); rank 1's answer at once. Like the hf engine
    under FSDP it holds the rank's rollout copy and takes the weights after every step (model/ is saved from it)."""

    shares_module = False

    def __init__(self, tok, model):
        super().__init__(tok)
        self.hf = HFRolloutEngine(model, tok, shares_module=False)

    def update_weights(self, state_dict):
        self.hf.update_weights(state_dict)

    def sequence_logprobs(self, *args):  # the sync guard's probe, on the rollout copy
        return self.hf.sequence_logprobs(*args)

    def generate(self, prompts, uids, sampling):
        from scirl import dist

        self.calls = (CALL, BAD_CALL) if dist.rank() == 0 else ()
        if not self.calls:
            self.calls = ("The answer is \\boxed{7006652}.",)  # ANSWER: no call
        return super().generate(prompts, uids, sampling)


def _worker(rank, world, port, tmp, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import faulthandler

    faulthandler.dump_traceback_later(150, exit=True)  # a hung collective fails the test with the stacks, not CI
    import scirl.train.build as build
    from scirl import dist
    from scirl.config import load_config
    from scirl.train.loop import run_training

    build.make_engine = lambda kind, cfg, model, tok, *a: RankScriptedEngine(tok, model)
    run_training(load_config(None, small_overrides(tmp, **{**EXTRA, "trainer.run_name": "full"})))
    full, part, port_file = tmp / "full", tmp / "part", tmp / "port2"
    if rank == 0:  # the run as it stood after step 2; then the resume's rendezvous port (the group was destroyed
        # at the end of the run, and its port may still be held)
        shutil.copytree(full, part)
        shutil.rmtree(part / "checkpoints" / "step_3")
        lines = (part / "metrics.jsonl").read_text().splitlines()
        (part / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
        (tmp / "port2.tmp").write_text(str(free_port()))
        (tmp / "port2.tmp").rename(port_file)
    while not port_file.exists():
        time.sleep(0.05)
    os.environ["MASTER_PORT"] = port_file.read_text()
    run_training(load_config(None, small_overrides(tmp, **{**EXTRA, "trainer.run_name": "part",
                                                           "trainer.resume": "auto"})))
    if rank == 0:
        torch.save({"ok": True}, out)
    dist.destroy()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent_dist")
    assert spawn_two_ranks(_worker, tmp, tmp / "done.pt")["ok"]
    return tmp / "full", tmp / "part"


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_rank_agent_metrics_are_reduced_over_the_ranks(runs):
    full, _ = runs
    rows = _rows(full)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # rank 0: 2 of 4 rows call (one fails), rank 1: none
        assert r["agent/tool_calls_mean"] == 0.25 and r["agent/num_turns_mean"] == 1.25
        assert r["agent/tool_error_rate"] == 0.5  # per call, over both ranks
        assert r["agent/tool_latency/calculator"] > 0 and r["agent/truncated_by_turns_frac"] == 0.0
        assert r["reward/mean"] == pytest.approx((0.4 * 2 + 0.2 * 6) / 8)  # tcr's num_turns 4 or 2, both ranks
    report = json.loads((full / "eval" / "step_3.json").read_text())
    overall = report["agent"]["overall"]  # 2 prompts, one per rank, gathered
    assert overall["tool_call_rate"] == 0.25 and overall["tool_error_rate"] == 0.5
    assert report["num_prompts"] == 2


def test_two_rank_agent_resume_continues_the_run(runs):
    from safetensors.torch import load_file

    full, part = runs
    a, b = _rows(full), _rows(part)
    assert [r["step"] for r in b] == [1, 2, 3]
    skip = ("timing/", "perf/", "time/", "agent/tool_latency/")  # wall-clock times
    assert {k: v for k, v in a[2].items() if not k.startswith(skip)} == \
        {k: v for k, v in b[2].items() if not k.startswith(skip)}
    wa = load_file(str(next((full / "checkpoints" / "step_3" / "model").glob("*.safetensors"))))
    wb = load_file(str(next((part / "checkpoints" / "step_3" / "model").glob("*.safetensors"))))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    w2 = load_file(str(next((full / "checkpoints" / "step_2" / "model").glob("*.safetensors"))))
    assert any(not torch.equal(wa[k], w2[k]) for k in wa)  # step 3 trained


def test_per_call_ratios_are_weighted_by_calls():
    from scirl.train.rank_metrics import combine

    parts = [{"agent/tool_calls_mean": 0.5, "agent/tool_error_rate": 0.5, "agent/tool_latency/calculator": 0.002},
             {"agent/tool_calls_mean": 0.0, "agent/tool_error_rate": 0.0},
             {"agent/tool_calls_mean": 1.5, "agent/tool_error_rate": 1.0, "agent/tool_latency/calculator": 0.004}]
    out = combine(parts)
    assert out["agent/tool_calls_mean"] == pytest.approx(2 / 3)
    assert out["agent/tool_error_rate"] == pytest.approx((0.25 + 1.5) / 2.0)  # errors / calls over all ranks
    assert out["agent/tool_latency/calculator"] == pytest.approx((0.001 + 0.006) / 2.0)
    none = combine([{"agent/tool_calls_mean": 0.0, "agent/tool_error_rate": 0.0}] * 2)
    assert none["agent/tool_error_rate"] == 0.0
