"""Rewards of your own: `module:function` and `path/to/file.py:function` specs (in this process, in forked and in
spawned workers, through `scirl grade`), one-line errors for bad specs, the coercion of whatever a reward returns
(numbers and numeric strings are scores; None, "abc", NaN are per-row errors, never a crash), and the first
traceback handed out once."""

import json
import math
import subprocess
import sys
import textwrap

import pytest

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards import RewardPool, RewardResult, get_reward
from scirl.rewards.user import BadRewardValue, canonical_spec, to_result

USER_REWARD = textwrap.dedent('''
    from scirl.rewards import RewardResult

    NOT_A_FUNCTION = 3


    def score(sample, completion, info):
        """1.0 when the completion ends with the answer; raises on "boom"; returns odd values on request."""
        if completion == "boom":
            raise ValueError("user reward bug")
        odd = {"none": None, "abc": RewardResult("abc"), "nan": float("nan"), "str": "0.25",
               "strscore": RewardResult("1.0", {"acc": "1"}, 7), "inf": RewardResult(float("inf")),
               "badcomp": RewardResult(1.0, {"acc": "yes"})}
        if completion in odd:
            return odd[completion]
        return float(completion.strip().endswith(sample.answer))


    class Graders:
        @staticmethod
        def half(sample, completion, info):
            return 0.5
''')


@pytest.fixture()
def user_dir(tmp_path, monkeypatch):
    """A working directory holding my_rewards.py and sub/other.py, cleaned out of sys.modules/sys.path after."""
    (tmp_path / "my_rewards.py").write_text(USER_REWARD)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.py").write_text(USER_REWARD.replace("return 0.5", "return 0.75"))
    (tmp_path / "broken.py").write_text("raise RuntimeError('cannot load me')\n")
    (tmp_path / "needs_dep.py").write_text("import scirl_no_such_dependency\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name in ("my_rewards", "broken", "needs_dep") or name.startswith("scirl_user_reward_"):
            del sys.modules[name]


def _s(answer="12", pid="p"):
    return Sample(prompt_id=pid, messages=[{"role": "user", "content": "q"}], answer=answer)


# --- resolving specs ----------------------------------------------------------------------------------------
def test_module_and_file_specs_resolve(user_dir):
    by_module = get_reward("my_rewards:score")
    assert by_module(_s("12"), "so 12", {}) == 1.0 and by_module(_s("12"), "so 13", {}) == 0.0
    by_file = get_reward("sub/other.py:Graders.half")  # relative to the working directory, dotted attribute
    assert by_file(_s(), "x", {}) == 0.75
    assert get_reward(str(user_dir / "sub" / "other.py") + ":Graders.half") is by_file  # loaded once
    assert get_reward("my_rewards.py:Graders.half")(_s(), "x", {}) == 0.5
    assert canonical_spec("sub/other.py:score") == f"{user_dir / 'sub' / 'other.py'}:score"
    assert canonical_spec("my_rewards:score") == "my_rewards:score"


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("missing.py:score", "file 'missing.py' not found"),
        ("no_such_module_xyz:score", "no module named 'no_such_module_xyz'"),
        ("my_rewards:scor", "my_rewards has no attribute 'scor'"),
        ("my_rewards:Graders.nope", "Graders has no attribute 'nope'"),
        ("my_rewards:NOT_A_FUNCTION", "NOT_A_FUNCTION is a int, not a function"),
        ("broken.py:score", "loading broken.py raised RuntimeError: cannot load me"),
        ("needs_dep:score", "importing needs_dep raised ModuleNotFoundError"),
        ("my_rewards:", "expected module:function"),
        (":score", "expected module:function"),
    ],
)
def test_bad_specs_are_one_line_errors_naming_the_spec(user_dir, spec, expected):
    with pytest.raises(ScirlError) as e:
        get_reward(spec)
    msg = str(e.value)
    assert "\n" not in msg and f"reward {spec!r}" in msg and expected in msg, msg
    with pytest.raises(ScirlError, match="expected module:function|not found|no module|no attribute|raised|not a"):
        RewardPool(spec, workers=1)  # the pool fails the same way, before starting any worker


def test_unknown_plain_name_mentions_the_spec_forms():
    with pytest.raises(ScirlError) as e:
        get_reward("my_rewards")
    assert "unknown reward 'my_rewards'" in str(e.value) and "module:function" in str(e.value)


# --- in workers -----------------------------------------------------------------------------------------------
ITEMS = [(_s("12"), "so 12", {}), (_s("12"), "so 13", {}), (_s("7"), "boom", {}), (_s("7"), "7", {})]


@pytest.mark.parametrize("workers, method", [(0, None), (2, "fork"), (2, "spawn")])
@pytest.mark.parametrize("spec", ["my_rewards:score", "sub/other.py:score"])
def test_user_reward_runs_inline_forked_and_spawned(user_dir, spec, workers, method):
    with RewardPool(spec, workers=workers, timeout=60, start_method=method) as pool:
        results, stats = pool.score(ITEMS)
        assert [r.score for r in results] == [1.0, 0.0, 0.0, 1.0]
        assert results[2].components == {"error": 1.0}
        assert stats == {"timeouts": 0, "errors": 1}
        assert "ValueError: user reward bug" in pool.first_error


def test_spawned_workers_run_a_registered_reward():
    with RewardPool("boxed_numeric", workers=2, start_method="spawn") as pool:
        results, stats = pool.score([(_s("12"), r"\boxed{12}", {}), (_s("12"), r"\boxed{13}", {})])
    assert [r.score for r in results] == [1.0, 0.0] and stats == {"timeouts": 0, "errors": 0}


# --- what a reward may return ------------------------------------------------------------------------------------
def test_to_result_coerces_numbers_and_rejects_the_rest():
    assert to_result(1) == RewardResult(1.0) and to_result(True) == RewardResult(1.0)
    assert to_result("0.25") == RewardResult(0.25)
    assert to_result(RewardResult("1.0", {"acc": "1"}, 7)) == RewardResult(1.0, {"acc": 1.0}, "7")
    assert type(to_result(RewardResult(1)).score) is float
    for bad in (None, "abc", float("nan"), float("inf"), [1.0], RewardResult("abc"), RewardResult(None),
                RewardResult(1.0, {"acc": "yes"}), RewardResult(1.0, ["acc"])):  # type: ignore[arg-type]
        with pytest.raises(BadRewardValue):
            to_result(bad)


ODD = ["none", "abc", "nan", "str", "strscore", "inf", "badcomp", "12"]


@pytest.mark.parametrize("workers", [0, 1])
def test_odd_return_values_are_coerced_or_counted_per_row(user_dir, workers):
    with RewardPool("my_rewards:score", workers=workers) as pool:
        results, stats = pool.score([(_s("12"), c, {}) for c in ODD])
        assert [r.score for r in results] == [0.0, 0.0, 0.0, 0.25, 1.0, 0.0, 0.0, 1.0]
        assert all(isinstance(r.score, float) and math.isfinite(r.score) for r in results)
        assert [bool(r.components.get("error")) for r in results] == [1, 1, 1, 0, 0, 1, 1, 0]
        assert results[4] == RewardResult(1.0, {"acc": 1.0}, "7")
        assert stats == {"timeouts": 0, "errors": 5}
        first = pool.take_first_error()
        assert first.startswith("BadRewardValue: reward returned score None, not a number")
        assert "Traceback" not in first  # a bad value is one line, not a traceback into scirl
        assert "'abc'" in pool.last_error or "component 'acc'" in pool.last_error


def test_first_error_is_kept_and_handed_out_once():
    pool = RewardPool("boxed_numeric", workers=0)
    assert pool.take_first_error() is None
    pool.score([(_s("12"), r"\boxed{12}", {})])
    assert pool.take_first_error() is None and pool.errors_total == 0
    pool.score([(_s("twelve"), r"\boxed{12}", {}), (_s("x"), r"\boxed{1}", {})])  # bad references raise
    pool.score([(_s("y"), r"\boxed{1}", {})])
    assert pool.errors_total == 3
    first = pool.take_first_error()
    assert "'twelve'" in first and "'y'" in pool.last_error
    assert pool.take_first_error() is None and "'twelve'" in pool.first_error


# --- scirl grade with a user reward ------------------------------------------------------------------------------
def test_grade_cli_with_a_user_reward_file(user_dir):
    src = user_dir / "in.jsonl"
    rows = [{"response": "so 12", "answer": "12"}, {"response": "boom", "answer": "1"},
            {"response": "abc", "answer": "1"}, {"response": "3", "answer": 3}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "scirl.cli", "grade", "--reward", "sub/other.py:score", str(src),
                           "--workers", "1"], capture_output=True, text=True, cwd=user_dir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rows: 4" in proc.stdout and "errors: 2" in proc.stdout and "mean_score: 0.5000" in proc.stdout
    assert "2 reward call(s) failed (scored 0); first: ValueError: user reward bug" in proc.stderr  # in order
    graded = [json.loads(line) for line in (user_dir / "in.graded.jsonl").read_text().splitlines()]
    assert [g["score"] for g in graded] == [1.0, 0.0, 0.0, 1.0]


# --- the trainer prints failures ---------------------------------------------------------------------------------
FLAKY = textwrap.dedent('''
    CALLS = [0]


    def score(sample, completion, info):
        """Every second call in a worker raises: a deterministic share of failures (one worker, calls in order)."""
        CALLS[0] += 1
        if CALLS[0] % 2 == 0:
            raise ValueError(f"flaky user reward on call {CALLS[0]}")
        return 1.0
''')


def test_trainer_prints_the_first_traceback_once_and_a_count_per_step(tmp_path, monkeypatch, capsys):
    from conftest import small_overrides
    from scirl.config import load_config
    from scirl.train.loop import run_training

    (tmp_path / "flaky.py").write_text(FLAKY)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, small_overrides(tmp_path, **{"trainer.total_steps": 1, "reward.name": "flaky.py:score",
                                                         "reward.workers": 1}))
    run_training(cfg)
    out = capsys.readouterr().out
    assert out.count("Traceback (most recent call last)") == 1, out
    assert out.count("ValueError: flaky user reward on call") == 1 and "on call 2" in out  # the first failure
    # validation (8 prompts x 4 samples) before and after, and the step (4 prompts x 4): every second call fails
    assert out.count("reward: 16 of 32 calls failed in this evaluation batch") == 2, out
    assert out.count("reward: 8 of 16 calls failed this step (scored 0; first traceback above)") == 1, out
    assert out.index("Traceback") < out.index("reward: 16 of 32")
    metrics = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward/errors"] for m in metrics] == [8.0] and metrics[0]["reward/mean"] == 0.5


ODD_VALUES = textwrap.dedent('''
    from scirl.rewards import RewardResult

    CALLS = [0]


    def score(sample, completion, info):
        """Alternates a numeric string score (coerced to 1.0) and a non-number (a per-row error)."""
        CALLS[0] += 1
        return RewardResult("1.0" if CALLS[0] % 2 else "abc")
''')


def test_validation_survives_a_reward_returning_strings(tiny_model_and_tokenizer, tmp_path, capsys):
    """eval/runner.py used to crash on float(RewardResult("abc").score); now the row is an error scored 0."""
    from scirl.data.prompts import tokenize_prompts
    from scirl.data.synthetic import make_problems
    from scirl.eval.runner import generate_and_grade
    from scirl.rollout.base import SamplingParams
    from scirl.rollout.hf_engine import HFRolloutEngine

    model, tok = tiny_model_and_tokenizer
    samples, ids, _ = tokenize_prompts(make_problems("val", 2, seed=0), tok, 256, True, "data.val")
    (tmp_path / "odd.py").write_text(ODD_VALUES)
    with RewardPool(f"{tmp_path / 'odd.py'}:score", workers=1) as pool:
        records, stats = generate_and_grade(HFRolloutEngine(model, tok), pool, samples, ids,
                                            SamplingParams(n=2, max_new_tokens=4), seed=0)
    assert [r["score"] for r in records] == [1.0, 0.0, 1.0, 0.0]
    assert [r["correct"] for r in records] == [True, False, True, False]
    assert stats["errors"] == 2 and stats["timeouts"] == 0
    out = capsys.readouterr().out
    assert "BadRewardValue: reward returned score 'abc', not a number" in out
    assert "reward: 2 of 4 calls failed in this evaluation batch" in out
