"""Every numeric config key is range-checked at load (one line naming key and value, exit 2, before any model or
data loads); YAML syntax errors name line and column; duplicate YAML keys are refused."""

import math

import pytest

from scirl.cli import main
from scirl.config import load_config
from scirl.config_ranges import INF, RANGES, numeric_keys
from scirl.errors import ScirlError


def test_every_numeric_key_has_a_range():
    missing = sorted(set(numeric_keys()) - set(RANGES))
    assert missing == [], f"numeric config keys without a range in scirl.config_ranges.RANGES: {missing}"
    assert set(RANGES) <= set(numeric_keys())  # and no range for a key that does not exist


def _outside(key: str, rng) -> list:
    """Values just outside the range (and NaN for float keys)."""
    is_int = numeric_keys()[key] is int
    step = 1 if is_int else 1e-9
    out = []
    if rng.low != -INF:
        out.append(rng.low if rng.low_open else rng.low - (1 if is_int else max(1e-3, abs(rng.low) * 1e-3)))
    if rng.high != INF:
        out.append(rng.high if rng.high_open else rng.high + (1 if is_int else max(step, 1e-3)))
    if not is_int:
        out.append(float("nan"))
    return [int(v) if is_int else float(v) for v in out]


CASES = [(key, value) for key, rng in sorted(RANGES.items()) for value in _outside(key, rng)]


@pytest.mark.parametrize("key, value", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_each_key_out_of_range_is_one_line_naming_it(key, value):
    with pytest.raises(ScirlError) as e:
        load_config(None, [f"{key}={value}"])
    msg = str(e.value)
    assert msg.startswith(f"{key}=") and "\n" not in msg, msg


def test_every_range_has_a_value_outside_it():
    assert {k for k, _ in CASES} >= {k for k, r in RANGES.items() if (r.low, r.high) != (-INF, INF)}


@pytest.mark.parametrize("override, fragment", [
    ("rollout.temperature=0", "greedy rollouts"),
    ("rollout.temperature=-0.5", "must be > 0"),
    ("rollout.top_p=0", "in (0, 1]"),
    ("rollout.top_p=1.01", "in (0, 1]"),
    ("actor.grad_clip=0", "zeroes every update"),
    ("actor.grad_clip=-1", "flips its direction"),
    ("actor.lr=-1e-6", "must be >= 0"),
    ("actor.lr=.nan", "finite"),
    ("actor.lr=.inf", "finite"),
    ("actor.weight_decay=-0.1", ">= 0"),
    ("trainer.test_freq=-1", ">= 0"),
    ("trainer.save_freq=-1", ">= 0"),
    ("actor.warmup_steps=-3", ">= 0"),
    ("trainer.num_threads=-1", ">= 0"),
    ("actor.betas=[0.9]", "2 numbers"),
    ("actor.betas=[0.9, 1.0]", "in [0, 1)"),
    ("actor.betas=[-0.1, 0.99]", "in [0, 1)"),
    ("trainer.run_name=", "plain folder name"),
    ("trainer.run_name=a/b", "plain folder name"),
    ("trainer.run_name=..", "plain folder name"),
])
def test_harmful_values_are_refused(override, fragment):
    with pytest.raises(ScirlError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)


def test_greedy_validation_stays_allowed():
    cfg = load_config(None, ["rollout.val_temperature=0"])
    assert cfg.rollout.val_temperature == 0.0
    assert load_config(None, ["trainer.num_threads=0", "actor.entropy_coeff=-0.01"]).actor.entropy_coeff == -0.01


def test_cli_exits_2_before_anything_loads(tmp_path, capsys):
    code = main(["train", "actor.lr=-1", f"trainer.output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "scirl: error: actor.lr=-1.0 must be >= 0"
    assert list(tmp_path.iterdir()) == []  # no run folder, no lock: nothing ran


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer:\n  total_steps: 3\n  seed: [1, 2\nactor:\n  lr: 1\n")
    with pytest.raises(ScirlError) as e:
        load_config(recipe)
    msg = str(e.value)
    assert msg == f"{recipe} line 4, column 6: expected ',' or ']', but got ':'", msg


def test_duplicate_yaml_key_is_refused_with_both_lines(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("actor:\n  lr: 1.0e-6\n  grad_clip: 1.0\n  lr: 1.0e-3\n")
    with pytest.raises(ScirlError) as e:
        load_config(recipe)
    assert str(e.value) == f"{recipe} line 4, column 3: key 'lr' is given twice (first at line 2)"
    recipe.write_text("actor:\n  lr: 1.0e-6\ntrainer:\n  seed: 2\nactor:\n  grad_clip: 2.0\n")
    with pytest.raises(ScirlError, match="key 'actor' is given twice"):
        load_config(recipe)


def test_every_bundled_recipe_is_in_range():
    from pathlib import Path

    import scirl

    recipes = sorted((Path(scirl.__file__).parent / "recipes").glob("*.yaml"))
    assert len(recipes) >= 7
    for recipe in recipes:
        cfg = load_config(recipe)
        assert math.isfinite(cfg.actor.lr) and cfg.trainer.save_freq > 0, recipe  # every recipe checkpoints
