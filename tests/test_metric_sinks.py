"""trainer.logger: TensorBoard / MLflow / W&B (offline) sinks on a real tiny run, read back; resume continues the
same W&B and MLflow runs; a failing sink is disabled after one line; bad logger names and MLflow URIs fail at load."""

import json
import subprocess
import sys

import pytest
from conftest import small_overrides

from scirl.config import load_config
from scirl.errors import ScirlError
from scirl.log import backends, sinks as sinks_mod
from scirl.log.sinks import eval_metrics, mlflow_key, with_aliases
from scirl.train.loop import run_training

ALL = "[console,jsonl,tensorboard,mlflow,wandb]"
FAST = {"rollout.max_new_tokens": 16, "data.val_size": 4, "rollout.val_n": 2, "trainer.save_hf": False}  # the sinks, not the model, are under test


def _rows(run):
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_names_aliases_and_sanitising():
    m = with_aliases({"reward/mean": 0.5, "response/length_mean": 12.0, "actor/entropy": 1.0})
    assert m["critic/score/mean"] == 0.5 and m["response_length/mean"] == 12.0 and m["reward/mean"] == 0.5
    v = eval_metrics({"metrics": {"mean@4": 0.3}, "by_source": {"gsm8k": {"mean@4": 0.25}}})
    assert v == {"val/mean@4": 0.3, "val/gsm8k/mean@4": 0.25, "val-core/gsm8k/reward/mean@4": 0.25}
    assert mlflow_key("val-core/gsm8k/reward/mean@4") == "val-core/gsm8k/reward/mean_at_4"


def test_all_sinks_on_a_real_run_and_resume(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    extra = {**FAST, "trainer.logger": ALL, "trainer.test_freq": 1, "trainer.save_freq": 1}
    run_training(load_config(None, small_overrides(tmp_path, **extra, **{"trainer.total_steps": 1})))
    ids = json.loads((tmp_path / "t" / "logger_ids.json").read_text())
    run_training(load_config(None, small_overrides(tmp_path, **extra)))  # resumes from step 1, runs step 2
    run = tmp_path / "t"
    assert json.loads((run / "logger_ids.json").read_text()) == ids  # the same W&B and MLflow runs continue
    rows = _rows(run)
    assert sorted(rows) == [1, 2]

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    for key, alias in (("reward/mean", "critic/score/mean"), ("response/length_mean", "response_length/mean"),
                       ("actor/grad_norm", None)):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([rows[s][key] for s in (1, 2)], rel=1e-6)
        if alias:
            assert [e.value for e in acc.Scalars(alias)] == [e.value for e in events]
    evals = {s: json.loads((run / "eval" / f"step_{s}.json").read_text()) for s in (0, 1, 2)}
    n = evals[0]["n"]
    src = next(iter(evals[0]["by_source"]))
    val = acc.Scalars(f"val/mean@{n}")
    assert [e.step for e in val] == [0, 1, 2]
    assert [e.value for e in val] == pytest.approx([evals[s]["metrics"][f"mean@{n}"] for s in (0, 1, 2)], rel=1e-6)
    assert [e.step for e in acc.Scalars(f"val-core/{src}/reward/mean@{n}")] == [0, 1, 2]

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("scirl")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [ids["mlflow"]]
    hist = client.get_metric_history(ids["mlflow"], "critic/score/mean")
    hist = sorted((h.step, h.value) for h in hist)
    assert [h[0] for h in hist] == [1, 2]
    assert [h[1] for h in hist] == pytest.approx([rows[s]["reward/mean"] for s in (1, 2)])
    hist = client.get_metric_history(ids["mlflow"], f"val-core/{src}/reward/mean_at_{n}")
    assert sorted(h.step for h in hist) == [0, 1, 2]
    assert client.get_run(ids["mlflow"]).data.params["trainer.run_name"] == "t"

    offline = sorted((run / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(offline) == 2  # one folder per session, the same run id: `wandb sync` joins them
    for d in offline:  # each session's records hold the metrics and the explicit step (binary protobuf)
        data = next(d.glob("*.wandb")).read_bytes()
        assert b"critic/score/mean" in data and b"trainer/global_step" in data
        assert f"val-core/{src}/reward/mean@{n}".encode() in data


def test_a_failing_sink_is_disabled_and_the_run_finishes(tmp_path, monkeypatch, capsys):
    calls = []

    def boom(self, step, metrics):
        calls.append(step)
        if step == 1:
            raise OSError("disk full")

    monkeypatch.setattr(backends.TensorBoardSink, "log", boom)
    summary = run_training(load_config(None, small_overrides(tmp_path, **{
        **FAST, "trainer.logger": "[console,jsonl,tensorboard]"})))
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "metric sink" in ln]
    assert lines == ["warning: metric sink tensorboard failed at step 1 (OSError: disk full); it is disabled, "
                     "the run goes on"]
    assert calls == [0, 1]  # the step-0 validation, then step 1 raised: nothing after
    assert summary["status"] == "finished" and sorted(_rows(tmp_path / "t")) == [1, 2]


def test_bad_logger_name_and_mlflow_uri_fail_at_load(tmp_path):
    with pytest.raises(ScirlError) as e:
        load_config(None, small_overrides(tmp_path, **{"trainer.logger": "[jsonl,tensorbord]"}))
    assert "trainer.logger" in str(e.value) and "tensorboard" in str(e.value) and "\n" not in str(e.value)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for uri in (str(blocker), f"sqlite:///{blocker}/m.db", str(blocker / "sub" / "mlruns")):
        with pytest.raises(ScirlError) as e:
            load_config(None, small_overrides(tmp_path, **{"trainer.logger": "[mlflow]", "trainer.mlflow_uri": uri}))
        msg = str(e.value)
        assert msg.startswith("trainer.mlflow_uri=") and str(blocker) in msg and "\n" not in msg
    cfg = load_config(None, small_overrides(tmp_path, **{"trainer.logger": "[mlflow]",
                                                         "trainer.mlflow_uri": f"sqlite:///{tmp_path}/m.db"}))
    assert cfg.trainer.logger == ["mlflow"]
    assert load_config(None, small_overrides(tmp_path)).trainer.logger == ["console", "jsonl"]


def test_wandb_and_mlflow_are_imported_only_when_asked_for():
    code = ("import sys, scirl.train.loop, scirl.config_checks; "
            "print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_mlflow_sqlite_store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    with sinks_mod.MetricSinks(["mlflow"], tmp_path / "run", uri=uri, run_name="r", config={"a": {"b": 1}}) as s:
        s.log_eval(0, {"metrics": {"mean@4": 0.25}, "by_source": {"src": {"mean@4": 0.25}}})
        s.log_train(1, {"reward/mean": 0.5})
    run_id = json.loads((tmp_path / "run" / "logger_ids.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val-core/src/reward/mean_at_4")] == [(0, 0.25)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "critic/score/mean")] == [(1, 0.5)]
    assert client.get_run(run_id).data.params["a.b"] == "1"
