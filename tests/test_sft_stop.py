"""SIGTERM / Ctrl-C in `scirl sft` (trainer.save_on_signal): the run stops at the next step boundary with a
checkpoint of the last finished step and exit 128 + signal, summary.json says interrupted, and running the same
command again finishes the run with the weights of an uninterrupted one, bitwise."""

from __future__ import annotations

import json
import signal

import torch
from safetensors.torch import load_file

from helpers.sft_data import sft_args
from scirl.cli import main
from scirl.sft import loop


def test_a_signal_checkpoints_and_the_rerun_finishes_bitwise(tmp_path, monkeypatch, capsys):
    calls = []

    def stop_before_step_3(stop):  # the stop check runs before each step: the third one sees the signal
        calls.append(1)
        return signal.SIGTERM if len(calls) == 3 else 0

    monkeypatch.setattr(loop, "stop_signal", stop_before_step_3)  # the name sft.loop calls
    assert main(["sft", *sft_args(tmp_path, **{"trainer.run_name": "cut"})]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 2" in err and "run the same command again" in err
    cut = tmp_path / "cut"
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_2"]
    assert json.loads((cut / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    assert main(["sft", *sft_args(tmp_path, **{"trainer.run_name": "cut"})]) == 0
    assert main(["sft", *sft_args(tmp_path, **{"trainer.run_name": "straight"})]) == 0
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from_step"] == 2 and summary["steps"] == 6
    a = load_file(str(cut / "checkpoints" / "step_6" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "checkpoints" / "step_6" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
