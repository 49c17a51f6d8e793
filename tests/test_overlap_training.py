"""Overlap and validation engines in real runs on the tiny model: reward.overlap on and off train to the same
weights with the same metrics and evaluations (the hf engine streaming two prompt groups per generate call), and a
run whose rollout.val_engine names another engine validates on it, with the trained weights pushed before."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_overrides
from scirl.config import load_config
from scirl.train.loop import run_training

REWARD = "tests/helpers/length_reward.py:score"  # varies within a group: the step really changes the weights
BASE = {"trainer.total_steps": 1, "trainer.save_freq": 1, "rollout.hf_max_batch_size": 8, "reward.name": REWARD}


def _run(tmp_path, name, **extra):
    cfg = load_config(None, small_overrides(tmp_path, **{**BASE, "trainer.run_name": name, **extra}))
    run_training(cfg)
    run = tmp_path / name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {s: (run / "eval" / f"step_{s}_samples.jsonl").read_text() for s in (0, 1)}
    return run, rows, evals, load_file(run / "checkpoints" / "step_1" / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def overlapped(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("overlap"), "overlap", **{"reward.overlap": True})


def _same_weights(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_overlap_on_and_off_train_the_same_run(tmp_path, overlapped):
    _, on_rows, on_evals, on_weights = overlapped
    _, off_rows, off_evals, off_weights = _run(tmp_path, "sequential", **{"reward.overlap": False})
    (on,), (off,) = on_rows, off_rows
    assert {k: v for k, v in on.items() if not k.startswith("timing/")} == \
        {k: v for k, v in off.items() if not k.startswith("timing/")}
    assert on["reward/std"] > 0 and on["actor/grad_norm"] > 0
    assert on_evals == off_evals  # validation (8 prompts x 4 = 4 calls of 8 rows) graded the same
    _same_weights(on_weights, off_weights)
    # 16 rows in two generate calls: the first call's groups were scored while the second generated
    assert on["timing/reward_overlapped"] > 0 and off["timing/reward_overlapped"] == 0
    assert off["timing/reward"] > 0 and on["timing/rollout"] > 0


def test_validation_runs_on_rollout_val_engine_with_the_trained_weights(tmp_path, monkeypatch, overlapped):
    """rollout.val_engine=vllm, stood in for by a real hf engine on its own copy of the weights (shares_module
    False: it keeps its own weights, as vLLM does), so the run must push the trained weights before validating."""
    from scirl.rollout.hf_engine import HFRolloutEngine
    from scirl.train import build

    made, real_make_engine = {}, build.make_engine

    class CountingEngine(HFRolloutEngine):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.prompts_sampled = self.pushes = 0

        def stream(self, prompts, uids, sampling):
            self.prompts_sampled += len(prompts)
            yield from super().stream(prompts, uids, sampling)

        def generate(self, prompts, uids, sampling):
            self.prompts_sampled += len(prompts)
            return super().generate(prompts, uids, sampling)

        def update_weights(self, state_dict):
            self.pushes += state_dict is not None
            super().update_weights(state_dict)

    def make_engine(kind, cfg, model, tokenizer, model_path, shares_module=True):
        if kind == "vllm":
            own = copy.deepcopy(model).eval().requires_grad_(False)
            made[kind] = CountingEngine(own, tokenizer, cfg.rollout.hf_max_batch_size, shares_module=False)
        else:
            made[kind] = CountingEngine(model, tokenizer, cfg.rollout.hf_max_batch_size, shares_module=shares_module)
        return made[kind]

    monkeypatch.setattr(build, "make_engine", make_engine)
    run, rows, evals, weights = _run(tmp_path, "valengine", **{"rollout.val_engine": "vllm"})
    assert real_make_engine is not make_engine and set(made) == {"hf", "vllm"}
    train_engine, val_engine = made["hf"], made["vllm"]
    assert train_engine.prompts_sampled == 4  # one step of 4 prompts; validation never sampled here
    assert val_engine.prompts_sampled == 16  # steps 0 and 1: 8 prompts each
    assert val_engine.pushes == 2  # before each validation (the train engine shares the actor's module)
    _, on_rows, on_evals, on_weights = overlapped  # the same run with validation on the training engine
    _same_weights(weights, on_weights)
    assert evals == on_evals  # same samples and grades: at step 1 the val engine held the trained weights
    from scirl.train.model_loading import resolve_model_path

    start = load_file(f"{resolve_model_path('builtin:tiny-qwen3')}/model.safetensors")
    assert sum(not torch.equal(start[k], weights[k]) for k in start) >= len(start) // 2  # the step moved them
    pushed = {k: v for k, v in val_engine.model.state_dict().items()}
    _same_weights({k: pushed[k] for k in weights}, weights)
    assert {k: v for k, v in rows[0].items() if not k.startswith("timing/")} == \
        {k: v for k, v in on_rows[0].items() if not k.startswith("timing/")}
