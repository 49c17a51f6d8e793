"""Config: YAML + dotted overrides, typed coercion, unknown keys with suggestions, validation."""

import pytest
import yaml

from scirl.config import BUILTIN_RECIPE, all_keys, load_config, save_config
from scirl.errors import ScirlError


def test_builtin_recipe_loads_and_overrides_apply():
    cfg = load_config(None, ["trainer.total_steps=20", "algorithm.clip_ratio_high=0.28", "actor.lr=1e-5"])
    assert cfg.trainer.total_steps == 20
    assert cfg.algorithm.clip_ratio_high == pytest.approx(0.28)
    assert cfg.actor.lr == pytest.approx(1e-5)  # YAML reads "1e-5" as a string; the float field converts it
    assert cfg.model.path == "builtin:tiny-qwen3"
    assert BUILTIN_RECIPE.is_file()


def test_int_to_float_ok_but_wrong_type_is_an_error():
    assert load_config(None, ["actor.grad_clip=2"]).actor.grad_clip == 2.0
    with pytest.raises(ScirlError, match="trainer.total_steps"):
        load_config(None, ["trainer.total_steps=abc"])
    with pytest.raises(ScirlError, match="trainer.total_steps"):
        load_config(None, ["trainer.total_steps=true"])


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ScirlError, match=r"unknown config key 'trainer.totl_steps'.*'trainer.total_steps'"):
        load_config(None, ["trainer.totl_steps=3"])
    # a key in the wrong section is matched by its leaf name
    with pytest.raises(ScirlError, match=r"'trainer.clip_ratio_high'.*'algorithm.clip_ratio_high'"):
        load_config(None, ["trainer.clip_ratio_high=0.3"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rollout:\n  temprature: 0.7\n")
    with pytest.raises(ScirlError, match=rf"rollout.temprature' in {recipe}.*'rollout.temperature'"):
        load_config(recipe)


def test_validation_errors_name_the_key():
    with pytest.raises(ScirlError, match="rollout.n"):
        load_config(None, ["rollout.n=1"])
    with pytest.raises(ScirlError, match="actor.ppo_mini_batch_size=5.*data.train_batch_size=16"):
        load_config(None, ["actor.ppo_mini_batch_size=5"])
    with pytest.raises(ScirlError, match="clip_ratio_c"):
        load_config(None, ["algorithm.clip_ratio_c=1.0"])
    with pytest.raises(ScirlError, match="recipe file not found"):
        load_config("no/such/recipe.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["trainer.run_name=x", "rollout.n=4"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert data["rollout"]["n"] == 4
    assert len(all_keys()) > 40


@pytest.mark.parametrize("override, key, suggestion", [
    ("algorithm.adv_estimator=grop", "algorithm.adv_estimator", "grpo"),
    ("actor.policy_loss=vanila", "actor.policy_loss", "vanilla"),
    ("reward.name=boxed", "reward.name", "boxed_numeric"),
    ("actor.loss_agg_mode=token_mean", "actor.loss_agg_mode", "token-mean"),
])
def test_unknown_registry_names_are_caught_at_load_time(override, key, suggestion):
    with pytest.raises(ScirlError, match=rf"^{key}: .*{suggestion}"):
        load_config(None, [override])


def test_verl_style_bounds_are_not_read_as_numbers(tmp_path):
    """YAML 1.1 reads 0.5_2 as the float 0.52; a "lower_upper" threshold must stay two bounds."""
    rc = "algorithm.rollout_correction"
    cfg = load_config(None, [f"{rc}.rollout_is=token", f"{rc}.rollout_is_threshold=0.5_2"])
    assert cfg.algorithm.rollout_correction.rollout_is_threshold == "0.5_2"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algorithm:\n  rollout_correction:\n    rollout_is: token\n    rollout_is_threshold: 0.5_2\n"
                      "actor:\n  lr: 1_0.0e-6\n")
    cfg = load_config(recipe)
    assert cfg.algorithm.rollout_correction.rollout_is_threshold == "0.5_2" and cfg.actor.lr == pytest.approx(1e-5)


def test_a_key_in_the_wrong_section_suggests_where_it_lives():
    with pytest.raises(ScirlError, match=r"'actor.tau_pos'.*did you mean 'actor.policy_loss_kwargs.tau_pos'"):
        load_config(None, ["actor.tau_pos=1.0"])
