"""Metric sinks behind one interface: `trainer.logger: [console, jsonl, tensorboard, mlflow, wandb]`.

`console` is the progress line, `jsonl` is metrics.jsonl (scirl.log.metrics_writer, training steps only, scirl's own
names); the sinks here (TensorBoard, MLflow, W&B) get every training step and every validation with the same keys
and an explicit integer step: scirl's names plus verl's where verl has one (`critic/score/mean`, ...), and the
validation as `val/<metric>`, `val/<source>/<metric>` and verl's `val-core/<source>/reward/<metric>`.
wandb / mlflow / tensorboard are imported only when their sink is asked for. A sink that raises is reported in one
line and disabled; the run goes on.
"""

from __future__ import annotations

from pathlib import Path

from scirl.log.backends import SINKS, check_mlflow_uri, mlflow_key, mlflow_uri  # noqa: F401 (re-exported)

LOGGERS = ("console", "jsonl", "tensorboard", "mlflow", "wandb")

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
    out.update({f"val/agent/{k}": v for k, v in report.get("agent", {}).get("overall", {}).items()
                if isinstance(v, (int, float))})  # multi-turn runs: val/agent/num_turns_mean, ...
    return out


def numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


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
