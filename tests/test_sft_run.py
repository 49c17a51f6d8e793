"""`scirl sft` end to end on the bundled tiny model (one process): steps from epochs, loss going down, the run
folder and its checkpoints (model/ loadable by model.path), a finished run that does nothing, a resume mid-epoch
that is bitwise the uninterrupted run, packing vs padding giving the same training, a skipped non-finite step,
and one-line refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers.sft_data import sft_args
from scirl.cli import main


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step}" / "model" / "model.safetensors"))


def test_sft_run_trains_checkpoints_and_finishes(tmp_path, capsys):
    assert main(["sft", *sft_args(tmp_path)]) == 0
    run = tmp_path / "s"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 6  # 2 epochs x ceil(12 / 4)
    assert summary["data"]["train"]["kept"] == 12
    assert summary["val_loss"]["after"] < summary["val_loss"]["before"] - 1.0  # 1e-3 on a task it can fit
    rows = [r for r in _rows(run) if "sft/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and [r["data/epoch"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert all(r["sft/conversations"] == 4 for r in rows) and rows[-1]["sft/loss"] < rows[0]["sft/loss"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_3", "step_6"]
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["total_steps"] == 6  # recorded
    # model/ is a plain HF folder: loadable as model.path
    from scirl.train.model_loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(run / "checkpoints" / "step_6" / "model"))
    assert torch.equal(model.state_dict()["model.norm.weight"], _weights(run, 6)["model.norm.weight"])
    card = (run / "README.md").read_text()  # the model card of an SFT run describes SFT, not RL
    assert "fine-tuned with supervised learning (loss on the assistant turns only)" in card
    assert "reinforcement-learning" not in card and "| `sft.epochs` | `2` |" in card
    assert f"| train | {tmp_path / 'train.jsonl'} | 12 | 12 | 0 |" in card
    assert f"{summary['val_loss']['before']:.4f} before, {summary['val_loss']['after']:.4f} after" in card
    capsys.readouterr()
    assert main(["sft", *sft_args(tmp_path)]) == 0  # finished: nothing to do
    assert "already finished at step 6" in capsys.readouterr().out
    assert main(["sft", *sft_args(tmp_path, **{"sft.epochs": 1})]) == 2  # 3 steps < the checkpoint's 6
    assert "past trainer.total_steps=3; raise sft.epochs or sft.max_steps to train on" in capsys.readouterr().err


def test_resume_mid_epoch_is_bitwise_the_uninterrupted_run(tmp_path):
    assert main(["sft", *sft_args(tmp_path, **{"trainer.run_name": "full", "trainer.save_freq": 2})]) == 0
    full, part = tmp_path / "full", tmp_path / "part"
    shutil.copytree(full, part)  # the run as it stood after step 4 (epoch 2, one batch into it)
    for name in ("step_6",):
        shutil.rmtree(part / "checkpoints" / name)
    (part / "summary.json").unlink()
    assert main(["sft", *sft_args(tmp_path, **{"trainer.run_name": "part", "trainer.save_freq": 2})]) == 0
    a, b = _weights(full, 6), _weights(part, 6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], _weights(full, 4)[k]) for k in a)  # steps 5 and 6 changed the weights
    loss = lambda run: [r["sft/loss"] for r in _rows(run) if "sft/loss" in r]  # noqa: E731
    assert loss(part) == loss(full)


def test_padding_trains_like_packing(tmp_path):
    assert main(["sft", *sft_args(tmp_path, **{"trainer.run_name": "pk", "sft.max_steps": 2,
                                               "sft.micro_batch_tokens": 1024})]) == 0
    assert main(["sft", *sft_args(tmp_path, **{"trainer.run_name": "pd", "sft.max_steps": 2,
                                               "sft.micro_batch_tokens": 256, "sft.packing": False})]) == 0
    lp = [r["sft/loss"] for r in _rows(tmp_path / "pk") if "sft/loss" in r]
    ld = [r["sft/loss"] for r in _rows(tmp_path / "pd") if "sft/loss" in r]
    assert len(lp) == 2 and all(abs(x - y) < 1e-5 for x, y in zip(lp, ld))
    a, b = _weights(tmp_path / "pk", 2), _weights(tmp_path / "pd", 2)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_a_non_finite_step_is_skipped_and_counted(tmp_path):
    from scirl.config import load_config
    from scirl.sft.data import Conversation
    from scirl.sft.step import train_step
    from scirl.train.model_loading import load_model_and_tokenizer

    cfg = load_config(*_split(sft_args(tmp_path)))
    model, _ = load_model_and_tokenizer("builtin:tiny-qwen3")
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    conv = Conversation(list(range(20)), [0] * 10 + [1] * 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hook = model.lm_head.register_forward_hook(lambda m, i, out: out * float("nan"))
    m = train_step(model, opt, sched, params, [conv], conv, cfg)
    assert m["sft/skipped"] == 1 and m["sft/loss"] != m["sft/loss"]  # NaN
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and not opt.state
    hook.remove()
    m = train_step(model, opt, sched, params, [conv], conv, cfg)
    assert m["sft/skipped"] == 0 and m["sft/assistant_tokens"] == 10
    assert not torch.equal(before["lm_head.weight"], model.state_dict()["lm_head.weight"])


def _split(args):
    return args[0], args[1:]


@pytest.mark.parametrize("extra,message", [
    ({"trainer.total_steps": 5}, "trainer.total_steps=5 is not used by scirl sft"),
    ({"sft.train": ""}, "sft.train is empty"),
    ({"sft.truncation": "left"}, "sft.truncation='left' must be one of drop, error"),
    ({"sft.micro_batch_tokens": 100}, "sft.micro_batch_tokens=100 must be >= sft.max_length=256"),
    ({"sft.epochs": 0}, "sft.epochs=0 must be >= 1"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, extra, message):
    assert main(["sft", *sft_args(tmp_path, **extra)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_sft_needs_a_recipe(capsys):
    assert main(["sft", "sft.train=x.jsonl"]) == 2
    assert "scirl sft needs a recipe" in capsys.readouterr().err
