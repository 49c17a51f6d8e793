"""Metric sinks behind one interface: `trainer.logger: [console, jsonl, tensorboard, mlflow, wandb]`.

`console` is the progress line, `jsonl` is metrics.jsonl (scirl.log.metrics_writer, training steps only, scirl's own
names); the sinks here (TensorBoard, MLflow, W&B) get every training step and every validation with the same keys
and an explicit integer step: scirl's names plus verl's where verl has one (`critic/score/mean`, ...), and the
validation as `val/<metric>`, `val/<source>/<metric>` and verl's `val-core/<source>/reward/<metric>`.
wandb / mlflow / tensorboard are imported only when their sink is asked for. A sink that raises is reported in one
line and disabled; the run goes on.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

LOGGERS = ("console", "jsonl", "tensorboard", "mlflow", "wandb")
IDS_FILE = "logger_ids.json"  # in the run folder: the W&B / MLflow run ids a resume continues

VERL_ALIASES = {  # scirl name -> verl name (verl's trainer/ppo/metric_utils.py)
    "reward/mean": "critic/score/mean", "reward/acc": "critic/rewards/mean",
    "adv/mean": "critic/advantages/mean", "response/length_mean": "response_length/mean",
    "response/length_max": "response_length/max", "response/truncated_frac": "response_length/clip_ratio",
    "timing/step": "timing_s/step", "timing/rollout": "timing_s/gen", "timing/update": "timing_s/update_actor",
}


def with_aliases(metrics: dict) -> dict:
    out = dict(metrics)
    out.update({VERL_ALIASES[k]: v for k, v in metrics.items() if k in VERL_ALIASES})
    return out


def eval_metrics(report: dict) -> dict:
    """One validation report -> flat keys: val/<metric>, val/<source>/<metric>, val-core/<source>/reward/<metric>."""
    out = {f"val/{k}": v for k, v in report.get("metrics", {}).items()}
    for source, metrics in report.get("by_source", {}).items():
        for k, v in metrics.items():
            out[f"val/{source}/{k}"] = v
            out[f"val-core/{source}/reward/{k}"] = v
    return out


def numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def mlflow_key(key: str) -> str:
    """As verl does: `@` -> `_at_`, then anything MLflow refuses -> `_`."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", key.replace("@", "_at_"))


def read_ids(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / IDS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def save_id(run_dir: Path, name: str, run_id: str) -> None:
    ids = read_ids(run_dir)
    ids[name] = run_id
    (Path(run_dir) / IDS_FILE).write_text(json.dumps(ids, indent=1) + "\n")


def mlflow_uri(uri: str, run_dir: Path) -> str:
    return uri or (Path(run_dir) / "mlruns").resolve().as_uri()


def check_mlflow_uri(uri: str) -> str | None:
    """None when the tracking URI can be written, else the reason (a local path or sqlite file only: a server
    URI is left to MLflow)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if path.is_dir():
            return f"{path} is a folder, not a database file"
        if path.exists():
            return None if os.access(path, os.W_OK) else f"{path} is not writable"
        target = path.parent
    else:
        target = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        return f"{target} is a file, not a folder"
    return None if os.access(target, os.W_OK) else f"{target} is not writable"


class TensorBoardSink:
    def __init__(self, run_dir: Path, start_step: int, **_):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: after a resume, TensorBoard drops the events a crashed run wrote past the checkpoint
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, metrics: dict) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowSink:
    def __init__(self, run_dir: Path, uri: str, project: str, run_name: str, config: dict, **_):
        uri = mlflow_uri(uri, run_dir)
        if not uri.startswith(("sqlite:", "http://", "https://", "databricks", "postgresql", "mysql")):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store, opt-in
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(project)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(project)
        run_id = read_ids(run_dir).get("mlflow")
        if run_id is None or self._missing(run_id):
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            save_id(run_dir, "mlflow", run_id)
            from mlflow.entities import Param

            flat = _flatten(config)
            params = [Param(mlflow_key(k)[:250], str(v)[:6000]) for k, v in flat.items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self.run_id = run_id

    def _missing(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return False
        except Exception:
            return True

    def log(self, step: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), v, ms, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbSink:
    def __init__(self, run_dir: Path, project: str, run_name: str, config: dict, **_):
        os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user asks for it
        import wandb

        run_id = read_ids(run_dir).get("wandb") or uuid.uuid4().hex[:8]
        save_id(run_dir, "wandb", run_id)
        self.run = wandb.init(project=project, name=run_name, id=run_id, resume="allow", dir=str(run_dir),
                              config=config, settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        # the step is a logged metric, not W&B's own counter: a resume re-logging steps is never dropped
        self.run.define_metric("trainer/global_step")
        self.run.define_metric("*", step_metric="trainer/global_step")

    def log(self, step: int, metrics: dict) -> None:
        self.run.log({**metrics, "trainer/global_step": step})

    def close(self) -> None:
        self.run.finish()


SINKS = {"tensorboard": TensorBoardSink, "mlflow": MlflowSink, "wandb": WandbSink}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


class MetricSinks:
    """The sinks a run asked for (rank 0 only). Each failure -> one line, that sink off, the run goes on."""

    def __init__(self, names, run_dir: Path, *, uri: str = "", project: str = "scirl", run_name: str = "",
                 config: dict | None = None, start_step: int = 0, note=print):
        self.note, self.sinks = note, {}
        kwargs = dict(run_dir=Path(run_dir), uri=uri, project=project, run_name=run_name or Path(run_dir).name,
                      config=config or {}, start_step=start_step)
        for name in names:
            if name in SINKS:
                try:
                    self.sinks[name] = SINKS[name](**kwargs)
                except Exception as e:  # noqa: BLE001 - a logger must never stop a run
                    self._fail(name, "could not start", e)

    def _fail(self, name: str, what: str, e: Exception) -> None:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        self.note(f"warning: metric sink {name} {what} ({type(e).__name__}: {msg}); it is disabled, the run goes on")

    def log(self, step: int, metrics: dict) -> None:
        values = numeric(metrics)
        for name, sink in list(self.sinks.items()):
            try:
                sink.log(int(step), values)
            except Exception as e:  # noqa: BLE001
                self._fail(name, f"failed at step {step}", e)
                self.sinks.pop(name)
                try:
                    sink.close()
                except Exception:  # noqa: BLE001
                    pass

    def log_train(self, step: int, metrics: dict) -> None:
        self.log(step, with_aliases(metrics))

    def log_eval(self, step: int, report: dict) -> None:
        self.log(step, eval_metrics(report))

    def close(self) -> None:
        for name, sink in self.sinks.items():
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                self._fail(name, "failed to close", e)
        self.sinks = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
