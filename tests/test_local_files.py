"""Local .json / .jsonl / .parquet files read with a field mapping, and the named loaders' error messages."""

import json
import sys

import pytest

from scirl.data.datasets import LoadRequest, get_dataset, load_dataset_split
from scirl.data.local_files import load_local_file, read_rows
from scirl.errors import ScirlError
from scirl.rewards import get_reward


def write_jsonl(path, rows, blank_after=None):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_json_array_with_mapping_and_dotted_path(tmp_path):
    rows = [{"q": "What is 2+3?", "meta": {"gold": 5}, "key": "a1", "sys": "Be brief."},
            {"q": "Half of 5?", "meta": {"gold": 2.5}, "key": "a2", "sys": "Be brief."}]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(rows))
    samples = load_local_file(path, {"prompt": "q", "answer": "meta.gold", "id": "key", "system": "sys"}, "mine")
    assert [s.prompt_id for s in samples] == ["mine/a1", "mine/a2"]
    assert [s.answer for s in samples] == ["5", "2.5"]
    s = samples[0]
    assert s.problem == "What is 2+3?" and s.metadata["system"] == "Be brief." and s.data_source == "mine"
    assert s.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]
    assert get_reward("math")(s, "\\boxed{5}", {}).score == 1.0


def test_jsonl_default_mapping_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "p1", "final_answer": 27.0}, {"problem": "p2",
                                                                                      "final_answer": 3}], 1)
    assert [n for n, _ in read_rows(path)] == [1, 3]  # the blank line 2 is skipped, numbering kept
    samples = load_local_file(path, {}, "d")
    assert [(s.prompt_id, s.problem, s.answer, s.answer_type) for s in samples] == [
        ("d/1", "p1", "27", "numeric"), ("d/3", "p2", "3", "numeric")]


def test_parquet_chat_prompt_and_nested_answer(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Find x."}],
             "reward_model": {"ground_truth": "7", "style": "rule"}, "extra": 1}]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert read_rows(path)[0][1]["reward_model"]["ground_truth"] == "7"
    (s,) = load_local_file(path, {}, "t")  # default answer field: reward_model.ground_truth
    assert (s.problem, s.answer, s.metadata["system"]) == ("Find x.", "7", "sys")
    assert s.messages[0] == {"role": "system", "content": "sys"}


def test_json_named_file_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [{"prompt": "a", "answer": "A"}, {"prompt": "b", "answer": "B"}])
    assert [r["prompt"] for _, r in read_rows(path)] == ["a", "b"]


def test_json_object_of_rows(tmp_path):
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"data": [{"question": "q", "answer": "1"}]}))
    assert load_local_file(path, {}, "o")[0].problem == "q"


def test_nel_inside_a_string_reads_intact(tmp_path):
    text = "speed\u0085of light\u2028here"
    path = write_jsonl(tmp_path / "nel.jsonl", [{"prompt": text, "answer": "c"}, {"prompt": "x", "answer": "y"}])
    assert "\u0085" in path.read_text(encoding="utf-8")  # written raw, not escaped
    rows = read_rows(path)
    assert len(rows) == 2 and rows[0][1]["prompt"] == text


def test_prompt_only_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    assert [s.answer for s in load_local_file(path, {"prompt": "prompt", "answer": None}, "p")] == [None, None]


def test_choices_become_lettered_options(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"q": "Pick.", "opts": ["red", "blue"], "key": "B"},
                                              {"q": "Pick.", "opts": [{"text": "x", "label": "A"},
                                                                      {"text": "y", "label": "B"}], "key": "A"}])
    a, b = load_local_file(path, {"prompt": "q", "answer": "key", "choices": "opts"}, "m")
    assert a.problem == "Pick.\n\nA. red\nB. blue" and a.metadata["choices"] == ["red", "blue"]
    assert a.answer_type == "mcq" and b.problem.endswith("A. x\nB. y")
    assert get_reward("mcq")(a, "<answer>blue</answer>", {}).score == 1.0


def test_missing_field_names_the_first_bad_line(tmp_path):
    rows = [{"q": "a", "final": "1"}, {"q": "b", "final": "2"}, {"q": "c"}, {"q": "d", "final": "4"}, {"q": "e"}]
    path = write_jsonl(tmp_path / "f.jsonl", rows)
    with pytest.raises(ScirlError) as e:
        load_local_file(path, {"prompt": "q", "answer": "final"}, "f")
    assert str(e.value) == f"data.fields.answer: field 'final' missing in {path} line 3"


def test_unknown_mapping_key_suggests_the_closest(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "a", "answer": "1"}])
    with pytest.raises(ScirlError, match="Did you mean 'answer'"):
        load_local_file(path, {"prompt": "prompt", "anwser": "answer"}, "u")


def test_no_default_field_found(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": "a", "answer": "1"}])
    with pytest.raises(ScirlError, match="data.fields.prompt: the first row has none of 'prompt', 'problem'"):
        load_local_file(path, {}, "n")


def test_malformed_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b" "answer": "2"}\n')
    with pytest.raises(ScirlError, match=r"bad\.jsonl line 2: invalid JSON \(Expecting ','"):
        read_rows(path)
    arr = tmp_path / "bad.json"
    arr.write_text('[\n{"prompt": "a"},\n{"prompt": }\n]')
    with pytest.raises(ScirlError, match=r"bad\.json line 3: invalid JSON"):
        read_rows(arr)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(ScirlError, match="nope.jsonl"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ScirlError, match="unsupported file type '.csv'"):
        read_rows(tmp_path / "x.csv")


def test_local_path_as_source(tmp_path):
    path = write_jsonl(tmp_path / "mix.jsonl", [{"question": "q1", "answer": "1"}, {"question": "q2", "answer": "2"}])
    samples = load_dataset_split(str(path), "eval", 1, 0, fields={})
    assert len(samples) == 1 and samples[0].data_source == "mix"


# ------------------------------------------------------------------------------------------------ named loaders
def _no_hub(monkeypatch):
    """The hub endpoint points at a closed local port (and no proxy), as on a machine without internet."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens


def test_no_data_dir_and_an_unreachable_hub_fail_fast_in_one_line(monkeypatch):
    _no_hub(monkeypatch)
    with pytest.raises(ScirlError) as e:
        get_dataset("aime24").loader(LoadRequest(variant="qwen", data_dir=None))
    assert str(e.value) == ("dataset aime24: no local data folder (set data.data_dir or $SCIRL_DATA_DIR to a folder "
                            "with aime24/test.jsonl) and hub 'math-ai/aime24' cannot be reached "
                            "(http://127.0.0.1:9 unreachable: Connection refused)")


def test_hf_hub_offline_uses_the_real_load_dataset_and_its_cache(tmp_path):
    """The real `datasets` in offline mode, in a fresh process (it reads HF_HUB_OFFLINE when imported)."""
    import os
    import subprocess

    code = ("from scirl.cli import main; import sys; sys.exit(main(['eval', '--model', 'builtin:tiny-qwen3', "
            "'--data', 'aime24', '-o', 'x.json']))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "SCIRL_DATA_DIR": ""}
    env.pop("SCIRL_DATA_DIR")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "scirl: error: dataset aime24: no local data folder (set data.data_dir or $SCIRL_DATA_DIR to a folder with "
        "aime24/test.jsonl) and hub 'math-ai/aime24' could not be loaded: "), err
    assert "Retrying" not in out.stderr and not (tmp_path / "x.json").exists()


def test_an_unreachable_hub_model_is_one_line_without_retries(monkeypatch):
    from scirl.train.model_loading import load_model_and_tokenizer

    _no_hub(monkeypatch)
    with pytest.raises(ScirlError) as e:
        load_model_and_tokenizer("nobody-has/this-model-xyz")
    assert str(e.value) == ("model.path: cannot download 'nobody-has/this-model-xyz' from the Hugging Face Hub "
                            "(http://127.0.0.1:9 unreachable: Connection refused) and it is not in the local cache; "
                            "use a local folder, or fill the cache where the hub is reachable")


def test_variant_without_hub_copy():
    with pytest.raises(ScirlError, match="sdpo_split/train.json\\); this variant has no hub copy"):
        get_dataset("sciknoweval_physics").loader(LoadRequest(variant="sdpo_train", data_dir=None))


def test_a_size_cap_that_cuts_a_real_source_is_said(tmp_path):
    from scirl.config import DataConfig
    from scirl.data.pipeline import describe, load_prompt_set

    path = write_jsonl(tmp_path / "five.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(5)])
    d = DataConfig(val=str(path), val_size=3, fields={"prompt": "question"})
    ps = load_prompt_set(d, "val")
    assert len(ps.samples) == 3 and ps.notes == ["data.val_size=3 keeps 3 of the 5 prompts of five"]
    assert describe(ps).endswith("; note: data.val_size=3 keeps 3 of the 5 prompts of five")
    assert load_prompt_set(DataConfig(val=str(path), val_size=5, fields={"prompt": "question"}), "val").notes == []


def test_data_dir_without_the_file(tmp_path):
    with pytest.raises(ScirlError) as e:
        get_dataset("phybench").loader(LoadRequest(variant="answered", data_dir=tmp_path))
    assert str(tmp_path / "phybench" / "PHYBench-fullques_v1.json") in str(e.value)


def test_named_loader_on_a_small_copy(tmp_path):
    """A data folder laid out like ../shared/data, with made-up rows: the field names the loaders rely on."""
    (tmp_path / "gsm8k").mkdir()
    rows = [{"question": "q", "answer": "2+2=<<2+2=4>>4\n#### 1,004", "idx": 7}]
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", rows)
    (s,) = get_dataset("gsm8k").loader(LoadRequest(data_dir=tmp_path))
    assert (s.prompt_id, s.answer, s.metadata["solution"]) == ("gsm8k/7", "1004", "2+2=<<2+2=4>>4")
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "q", "idx": 7}, {"question": "r", "idx": 8}])
    with pytest.raises(ScirlError, match=r"dataset gsm8k: field 'answer' missing in .*test\.jsonl line 1"):
        get_dataset("gsm8k").loader(LoadRequest(data_dir=tmp_path))


def test_hub_path_runs_the_real_load_dataset_on_a_local_folder(tmp_path, monkeypatch):
    """No hub here: the hub id is redirected to a local folder, and the real `datasets.load_dataset` reads it."""
    import datasets

    folder = tmp_path / "aime24_hub"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", [{"id": 60, "problem": "Find x.", "answer": "204"},
                                        {"id": 61, "problem": "Find y.", "answer": "025"}])
    real = datasets.load_dataset
    seen = []

    def redirect(path, name=None, **kwargs):
        seen.append(path)
        return real(str(folder), name, cache_dir=str(tmp_path / "cache"), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", redirect, raising=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: offline mode skips scirl's reachability probe
    samples = get_dataset("aime24").loader(LoadRequest(variant="qwen", data_dir=None))
    assert seen == ["math-ai/aime24"]
    assert [(s.prompt_id, s.problem, s.answer) for s in samples] == [("aime24/60", "Find x.", "204"),
                                                                    ("aime24/61", "Find y.", "025")]
