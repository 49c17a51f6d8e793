"""Source specs, prompt templates, dedup, long-prompt handling and weighted mixing (no shared data needed)."""

import json
from collections import Counter

import pytest

from scirl.config import DataConfig, load_config
from scirl.data.datasets import parse_source, parse_sources
from scirl.data.pipeline import load_prompt_set, make_sampler, require_answers, tokenize_prompt_set
from scirl.data.prompts import COT_BOXED_SUFFIX, apply_template, dedup_by_prompt, tokenize_prompts
from scirl.data.sample import Sample
from scirl.data.sampler import MixturePromptSampler, PromptSampler
from scirl.errors import ScirlError


def _sample(pid, problem, **kw):
    return Sample(pid, [], kw.pop("answer", "1"), problem=problem, **kw)


def test_parse_sources_names_variants_paths_weights(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"prompt": "q", "answer": "1"}\n')
    items = parse_sources(f"tiny_physics/val:0.25,{f}:0.75")
    assert [(s.name, s.variant, s.weight) for s in items] == [("tiny_physics", "val", 0.25), (None, None, 0.75)]
    assert items[1].path == f and items[1].label == "mine"
    assert parse_source("tiny_physics").weight is None and parse_source("tiny_physics").label == "tiny_physics"


@pytest.mark.parametrize("text, expected", [
    ("aime_24", "unknown dataset 'aime_24'. Did you mean 'aime24'?"),
    ("tiny_physics/vall", "Did you mean 'val'?"),
    ("tiny_physics:0.5,tiny_physics/val", "give a weight to every source or to none"),
    ("tiny_physics:-1", "must be > 0"),
    ("tiny_physics:abc", "is not a number"),
    ("tiny_physics,tiny_physics", "listed twice"),
])
def test_parse_sources_errors(text, expected):
    with pytest.raises(ScirlError, match=None) as e:
        parse_sources(text, "data.train")
    assert expected in str(e.value) and str(e.value).startswith("data.train:")
    assert "\n" not in str(e.value)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ScirlError) as e:
        parse_sources("no_such_set", "--data")
    for name in ("aime24", "aime25", "amc23", "gsm8k", "phybench", "sciknoweval_physics", "dapo_math_17k",
                 "olympiadbench_physics", "tiny_physics"):
        assert name in str(e.value)


def test_templates():
    s = _sample("a", "What is 2+2?")
    apply_template([s], "cot_boxed")
    assert s.messages == [{"role": "user", "content": "What is 2+2?\n" + COT_BOXED_SUFFIX}]
    apply_template([s], "plain", system_prompt="Be brief.")
    assert s.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    s.metadata["system"] = "row system"
    apply_template([s], "answer_tag")
    assert s.messages[0] == {"role": "system", "content": "row system"}
    s.metadata["source_prompt"] = "Solve: What is 2+2? Answer: $Answer"
    apply_template([s], "source")
    assert s.messages[-1]["content"] == "Solve: What is 2+2? Answer: $Answer"
    with pytest.raises(ScirlError, match="Did you mean 'cot_boxed'"):
        apply_template([s], "cot_boxd")


def test_auto_template_follows_the_dataset():
    tiny = _sample("t", "q", data_source="tiny_physics")
    math = _sample("m", "q", data_source="aime24/opd")
    mcq = _sample("c", "q", data_source="sciknoweval_physics")
    apply_template([tiny, math, mcq], "auto")
    assert tiny.messages == [{"role": "user", "content": "q"}]
    assert math.messages[-1]["content"].endswith(COT_BOXED_SUFFIX)
    assert mcq.messages[0]["role"] == "system" and "<answer>" in mcq.messages[0]["content"]


def test_dedup_by_rendered_prompt():
    samples = apply_template([_sample("a", "x"), _sample("b", "y"), _sample("c", "x")], "plain")
    kept, removed = dedup_by_prompt(samples)
    assert [s.prompt_id for s in kept] == ["a", "b"] and removed == 1


def test_long_prompts_drop_truncate_or_error(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    samples = apply_template([_sample("short", "F = 2*3"), _sample("long", "mass " * 200)], "plain")
    kept, ids, over = tokenize_prompts(samples, tok, 64, True, "data.train")
    assert [s.prompt_id for s in kept] == ["short"] and over == 1
    full = tokenize_prompts(samples, tok, 10**6, True, "k")[1][1]
    kept, ids, over = tokenize_prompts(samples, tok, 64, True, "data.train", truncation="left")
    assert len(kept) == 2 and over == 1 and ids[1] == full[-64:]
    kept, ids, over = tokenize_prompts(samples, tok, 64, True, "data.train", truncation="right")
    assert ids[1] == full[:64]
    with pytest.raises(ScirlError, match="prompt 'long' has .* tokens, more than data.max_prompt_length=64"):
        tokenize_prompts(samples, tok, 64, True, "data.train", truncation="error")


def test_prompt_only_rows_are_refused_for_grading():
    samples = [_sample("a", "q", data_source="phybench/all"), _sample("b", "q", answer=None, data_source="phybench/all")]
    with pytest.raises(ScirlError, match="1 of 2 prompts of 'phybench/all' have no reference answer"):
        require_answers(samples, "--data")


def test_mixture_sampler_follows_weights_and_resumes():
    sampler = MixturePromptSampler([100, 10], [0.8, 0.2], batch_size=20, seed=3)
    counts = Counter()
    for _ in range(50):
        batch = sampler.next_batch()
        assert len(batch) == 20
        counts.update("a" if i < 100 else "b" for i in batch)
    frac_b = counts["b"] / 1000
    assert 0.16 < frac_b < 0.24  # 20% of slots although source b has 1/11 of the prompts
    state = json.loads(json.dumps(sampler.state_dict()))
    expected = [sampler.next_batch() for _ in range(3)]
    fresh = MixturePromptSampler([100, 10], [0.8, 0.2], batch_size=20, seed=3)
    fresh.load_state_dict(state)
    assert [fresh.next_batch() for _ in range(3)] == expected


def test_source_sampler_take_crosses_epochs():
    s = PromptSampler(5, 1, seed=0)
    first = s.take(5)
    assert sorted(first) == list(range(5))
    nxt = s.take(7)
    assert sorted(nxt[:5]) == list(range(5)) and s.epoch == 2


def test_load_prompt_set_mixes_two_local_files(tmp_path, tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"question": f"a{i} + 1?", "final": str(i)}) + "\n" for i in range(6)))
    b.write_text("".join(json.dumps({"question": f"b{i % 3} + 1?", "final": str(i)}) + "\n" for i in range(6)))
    d = DataConfig(train=f"{a}:3,{b}:1", fields={"prompt": "question", "answer": "final"}, template="plain")
    ps = load_prompt_set(d, "train")
    assert ps.labels == ["a", "b"] and ps.weights == [3.0, 1.0]
    assert ps.stats == {"loaded": 12, "duplicates": 3} and ps.sizes() == [6, 3]
    ps = tokenize_prompt_set(ps, tok, d, "data.train")
    sampler = make_sampler(ps, batch_size=4, seed=0, shuffle=True)
    assert isinstance(sampler, MixturePromptSampler)
    picked = [ps.samples[i].data_source for _ in range(30) for i in sampler.next_batch()]
    assert 0.6 < picked.count("a") / len(picked) < 0.9


def test_config_data_keys(tmp_path):
    cfg = load_config(None, ["data.train=tiny_physics/train:0.5,tiny_physics/val:0.5", "data.truncation=left",
                             "data.fields.prompt=question", "data.template=cot_boxed"])
    assert cfg.data.fields == {"prompt": "question"} and cfg.data.truncation == "left"
    with pytest.raises(ScirlError, match="data.truncation"):
        load_config(None, ["data.truncation=middle"])
    with pytest.raises(ScirlError, match="mixing weights only apply to data.train"):
        load_config(None, ["data.val=tiny_physics/train:1,tiny_physics/val:1"])
    with pytest.raises(ScirlError, match="did you mean 'data.template'"):
        load_config(None, ["data.templte=plain"])


def test_training_on_a_weighted_mixture_with_a_local_file(tmp_path):
    """The trainer's data path end to end: a named source and a local file mixed by weight."""
    from scirl.data.synthetic import make_problems
    from scirl.train.loop import run_training
    from tests.conftest import small_overrides

    local = tmp_path / "mine.jsonl"
    rows = [{"question": s.problem or s.messages[0]["content"], "final": s.answer} for s in make_problems("val", 20, 5)]
    local.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mix = [f"data.train=tiny_physics/train:0.5,{local}:0.5", "data.fields={prompt: question, answer: final}"]
    with pytest.raises(ScirlError, match="'mine' has no reward of its own"):
        run_training(load_config(None, small_overrides(tmp_path, **{"trainer.total_steps": 1}) + mix))
    cfg = load_config(None, small_overrides(tmp_path) + mix + ["reward.name=boxed_numeric"])
    summary = run_training(cfg)
    assert summary["data"]["train"] == {"loaded": 84, "duplicates": 0, "too_long_dropped": 0, "prompts": 84}
    metrics = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["reward/mean"] >= 0 for m in metrics)
