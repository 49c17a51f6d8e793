"""The model card: written at the end of a run, its header parses with huggingface_hub.ModelCard.load, every number
of its results table equals the run's eval JSON, `scirl card` works on a finished run, and no network is used."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from conftest import REPO, small_overrides
from scirl.config import load_config

VALUES = {0: 0.125, 1: 0.25, 2: 0.75, 3: 0.5}  # mean@4 per validation step: the best is step 2, the final step 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import scirl.train.loop as loop
    from scirl.train.loop import run_training

    tmp = tmp_path_factory.mktemp("card")
    real = loop.write_eval

    def write_eval(run_dir, step, report, records):
        report["metrics"]["mean@4"] = VALUES[step]
        return real(run_dir, step, report, records)

    loop.write_eval = write_eval
    try:
        run_training(load_config(None, small_overrides(tmp, **{
            "trainer.total_steps": 3, "trainer.test_freq": 1, "trainer.best_metric": "mean@4",
            "rollout.max_new_tokens": 16, "data.val_size": 4})))
    finally:
        loop.write_eval = real
    return tmp / "t"


def _results(text: str, table: int = 0) -> dict[str, dict[str, str]]:
    """The results section's `table`-th table (0: metrics, 1: reward components): row label -> {column: cell}."""
    section = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"(?:^\|.*\n?)+", section, flags=re.M)
    lines = blocks[table].splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(head[1:], cells[1:])) for cells in
            ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}


def test_card_written_at_end_of_run_matches_eval_json(run, monkeypatch):
    card_path = run / "README.md"
    text = card_path.read_text(encoding="utf-8")
    card = ModelCard.load(card_path)  # a local file: no network
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert "grpo" in data["tags"] and "base_model" not in data  # builtin:tiny-qwen3 is no hub id
    assert data["datasets"] == ["tiny_physics"]
    evals = {s: json.loads((run / "eval" / f"step_{s}.json").read_text()) for s in (0, 2, 3)}
    table = _results(text)
    assert list(table) == ["before", "best", "final"]
    for label, step in (("before", 0), ("best", 2), ("final", 3)):
        row = table[label]
        assert row["step"] == str(step)
        metrics = {k: v for k, v in evals[step]["metrics"].items() if not k.startswith("std")}
        assert set(row) - {"step"} == set(metrics)
        for key, value in metrics.items():  # printed to 4 decimals: the same number
            assert row[key] == f"{value:.4f}", (label, key)
    assert table["best"]["mean@4"] == "0.7500" and table["final"]["mean@4"] == "0.5000"
    index = {m["name"]: m["value"] for r in data["model-index"][0]["results"] for m in r["metrics"]}
    for label, step in (("best", 2), ("final", 3)):
        for key, value in evals[step]["metrics"].items():
            if not key.startswith("std"):
                assert index[f"{key} ({label}, step {step})"] == value  # exact in the header
    assert 'subfolder="checkpoints/best/model"' in text
    components = _results(text, table=1)  # the reward's named parts, as eval/step_N.json has them
    assert list(components) == ["before", "best", "final"]
    for label, step in (("before", 0), ("best", 2), ("final", 3)):
        parts = evals[step]["reward_components"]
        assert parts and set(components[label]) - {"step"} == set(parts)
        for key, value in parts.items():
            assert components[label][key] == f"{value:.4f}", (label, key)
    for section in ("Summary", "Training pipeline", "Hyperparameters", "Datasets", "Results", "Curves",
                    "How to load", "Intended use and limitations", "Licence"):
        assert f"## {section}" in text
    assert "| train | tiny_physics | 64 |" in text and "| `actor.lr` | `0.0001` |" in text


def test_card_cli_hub_base_licence_and_plots(run, tmp_path):
    fake = tmp_path / "run"
    shutil.copytree(run, fake, ignore=shutil.ignore_patterns("checkpoints", "*.jsonl"))
    base = tmp_path / "base"  # a local base folder whose card names its licence
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n", encoding="utf-8")
    cfg = yaml.safe_load((fake / "config.yaml").read_text())
    cfg["model"]["path"] = str(base)
    (fake / "config.yaml").write_text(yaml.safe_dump(cfg))
    (fake / "plots").mkdir(exist_ok=True)  # the run wrote real plots too
    (fake / "plots" / "reward.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "pub" / "README.md"
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-m", "scirl", "card", str(fake), "-o", str(out)], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stderr
    card = ModelCard.load(out)
    assert card.data.license == "apache-2.0" and card.data.base_model is None
    assert "](../run/plots/reward.png)" in card.text
    assert 'subfolder="checkpoints/step_3/model"' in card.text  # no best.json copied: the final checkpoint

    cfg["model"]["path"] = "Qwen/Qwen3-0.6B"  # a hub id: the header names it (the cache only, never the network)
    (fake / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "scirl", "card", str(fake)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    data = ModelCard.load(fake / "README.md").data
    assert data.base_model == "Qwen/Qwen3-0.6B" and data.base_model_relation == "finetune"

    res = subprocess.run([sys.executable, "-m", "scirl", "card", str(tmp_path / "nope")], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 2 and re.search(r"run folder .*nope not found", res.stderr)


def test_export_writes_the_card_into_the_exported_folder(run, tmp_path):
    """`scirl export RUN` publishes a folder that loads on its own: its README.md is the run's card, the loading
    snippet points at the folder itself (no subfolder) and the curves are copied beside it."""
    (run / "plots").mkdir(exist_ok=True)
    (run / "plots" / "reward.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "exported"
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-m", "scirl", "export", str(run), "-o", str(out)], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert f"model card: {out / 'README.md'}" in res.stdout
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-generation" and "grpo" in card.data.tags
    assert f'repo = "{out.as_posix()}"' in card.text and "subfolder=" not in card.text
    assert "](plots/reward.png)" in card.text and (out / "plots" / "reward.png").read_bytes().startswith(b"\x89PNG")
    assert _results(card.text)["final"]["step"] == "3"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0  # still a plain HF folder


def test_lora_and_4bit_runs_list_their_adapter_and_quantisation(run, tmp_path):
    from scirl.publish.card import build_card

    fake = tmp_path / "run"
    shutil.copytree(run, fake, ignore=shutil.ignore_patterns("checkpoints", "*.jsonl"))
    cfg = yaml.safe_load((fake / "config.yaml").read_text())
    assert "model.lora.rank" not in str(build_card(fake))  # a full-weight run lists no adapter keys
    cfg["model"]["lora"] = {**cfg["model"]["lora"], "rank": 64, "alpha": 64, "target_modules": ["q_proj", "v_proj"]}
    cfg["model"]["quantization"] = {**cfg["model"].get("quantization", {}), "load_in_4bit": True,
                                    "bnb_4bit_quant_type": "nf4"}
    (fake / "config.yaml").write_text(yaml.safe_dump(cfg))
    card = build_card(fake)
    assert "| `model.lora.rank` | `64` |" in card.text and "| `model.lora.target_modules` | `['q_proj', 'v_proj']` |" \
        in card.text
    assert "| `model.quantization.bnb_4bit_quant_type` | `nf4` |" in card.text and "(4-bit nf4) with a LoRA adapter" \
        in card.text
    assert {"lora", "qlora", "4-bit"} <= set(card.data.tags)
