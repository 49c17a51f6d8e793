"""The sinks behind scirl.log.sinks.MetricSinks: TensorBoard, MLflow, W&B (offline). Each has log(step, metrics) and
close(); each imports its library only when built. The W&B and MLflow run ids live in <run>/logger_ids.json so a
resume continues the same runs."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

IDS_FILE = "logger_ids.json"  # in the run folder: the W&B / MLflow run ids a resume continues


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
    Path(run_dir).mkdir(parents=True, exist_ok=True)
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


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


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
