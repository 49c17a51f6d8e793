"""SFT data (scirl.sft.data): the assistant-only label mask token by token on a hand-written tool conversation with
Qwen3's real chat template, its agreement with the RL rollout's tool-turn tokens, Qwen3's re-rendered <think>
blocks, the three file formats, and one-line errors naming the file and row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scirl.agent.hermes import tool_response_ids
from scirl.config_sft import SFTConfig
from scirl.errors import ScirlError
from scirl.sft.data import check_messages, encode_conversation, load_conversations

HERE = Path(__file__).parent
ASSETS = HERE.parent / "src" / "scirl" / "assets" / "tiny-qwen3"
CALL = {"type": "function", "function": {"name": "calculator", "arguments": {"expr": "12*34"}}}
TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate an expression.",
                                           "parameters": {"type": "object", "properties": {"expr": {"type": "string"}},
                                                          "required": ["expr"]}}}]
CONV = [{"role": "user", "content": "What is 12*34?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "name": "calculator", "content": "408"},
        {"role": "assistant", "content": "The answer is 408."}]
# the expected layout, written out by hand: (text, label) — label 1 on what the model generates in a rollout
SEGMENTS = [("<|im_start|>user\nWhat is 12*34?<|im_end|>\n<|im_start|>assistant\n", 0),
            ('<think>\n\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expr": "12*34"}}\n'
             "</tool_call><|im_end|>", 1),
            ("\n<|im_start|>user\n<tool_response>\n408\n</tool_response><|im_end|>\n<|im_start|>assistant\n", 0),
            ("<think>\n\n</think>\n\nThe answer is 408.<|im_end|>", 1)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """The tiny tokenizer with Qwen3's official chat template (the bundled one ignores tools and tool_calls)."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tiny-qwen3-tools")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ASSETS / f, d / f)
    shutil.copy(HERE / "helpers" / "qwen3_chat_template.jinja", d / "chat_template.jinja")
    return AutoTokenizer.from_pretrained(str(d))


def expected(tok, segments):
    """(ids, mask) of the concatenated text: a token's label is its segment's (from the character offsets)."""
    text = "".join(s for s, _ in segments)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    bounds, at = [], 0
    for s, label in segments:
        bounds.append((at, at + len(s), label))
        at += len(s)
    mask = []
    for start, end in enc["offset_mapping"]:
        labels = {label for a, b, label in bounds if a < end and start < b}
        assert len(labels) == 1, (start, end)  # no token straddles a label boundary
        mask.append(labels.pop())
    return enc["input_ids"], mask


def test_label_mask_token_by_token_on_a_tool_conversation(tok):
    conv = encode_conversation(tok, check_messages(CONV, "t"), None, "t")
    ids, mask = expected(tok, SEGMENTS)
    assert conv.ids == ids
    assert conv.mask == mask
    assert sum(mask) == len(tok("".join(s for s, lab in SEGMENTS if lab), add_special_tokens=False)["input_ids"])
    # exactly the tokens the agent rollout appends after a model turn (0-labelled there too)
    tool_turn = tok(SEGMENTS[2][0], add_special_tokens=False)["input_ids"]
    assert tool_response_ids(tok, ["408"]) == tool_turn
    # the eos (<|im_end|>) ends both assistant turns with label 1; the newline after it is 0
    eos = tok.eos_token_id
    assert [m for t, m in zip(conv.ids, conv.mask) if t == eos] == [0, 1, 0, 1]


def test_tools_render_in_the_system_prompt_with_label_zero(tok):
    conv = encode_conversation(tok, check_messages(CONV, "t"), TOOLS, "t")
    plain = encode_conversation(tok, check_messages(CONV, "t"), None, "t")
    system = tok.decode(conv.ids[: len(conv) - len(plain)])
    assert system.startswith("<|im_start|>system\n# Tools") and '"calculator"' in system
    assert conv.mask[: len(conv) - len(plain)] == [0] * (len(conv) - len(plain))
    assert conv.ids[len(conv) - len(plain):] == plain.ids and conv.mask[len(conv) - len(plain):] == plain.mask


def test_qwen3_rerendered_think_blocks_keep_each_turn_as_generated(tok):
    """Qwen3's template drops the <think> of assistant turns before the last user query; each turn is kept as it
    was rendered when it was the last (as the model generated it), so the second turn's reasoning is trained."""
    conv = [{"role": "user", "content": "a"},
            {"role": "assistant", "content": "one", "reasoning_content": "think one"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "<think>\nthink two\n</think>\n\ntwo"}]
    c = encode_conversation(tok, check_messages(conv, "t"), None, "t")
    labelled = tok.decode([t for t, m in zip(c.ids, c.mask) if m])
    assert labelled == ("<think>\nthink one\n</think>\n\none<|im_end|>"
                        "<think>\nthink two\n</think>\n\ntwo<|im_end|>")
    final = tok.apply_chat_template(conv, tokenize=False)
    assert "think one" not in final  # the template itself would have dropped it


def test_enable_thinking_false_keeps_the_empty_think_in_the_prompt(tok):
    c = encode_conversation(tok, check_messages(CONV, "t"), None, "t", enable_thinking=False)
    labelled = tok.decode([t for t, m in zip(c.ids, c.mask) if m])
    assert "<think>" not in labelled and labelled.endswith("The answer is 408.<|im_end|>")


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{**r, "tools": json.dumps(r.get("tools"))} for r in rows]), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_formats_give_the_same_tokens(tok, tmp_path, suffix):
    rows = [{"messages": CONV, "tools": TOOLS}, {"messages": CONV[:2] + CONV[2:]}]
    data = load_conversations(str(_write(tmp_path / f"d{suffix}", rows)), "sft.train", tok, SFTConfig())
    want = [encode_conversation(tok, check_messages(CONV, "t"), TOOLS, "t"),
            encode_conversation(tok, check_messages(CONV, "t"), None, "t")]
    if suffix == ".parquet":  # a null 'tools' column entry: no tools
        want[1] = encode_conversation(tok, check_messages(CONV, "t"), None, "t")
    assert [c.ids for c in data.conversations] == [w.ids for w in want]
    assert [c.mask for c in data.conversations] == [w.mask for w in want]
    assert data.stats["kept"] == 2 and data.stats["assistant_tokens"] == sum(sum(w.mask) for w in want)


def test_too_long_conversations_drop_or_fail(tok, tmp_path):
    path = str(_write(tmp_path / "d.jsonl", [{"messages": CONV}, {"messages": CONV[:2]}]))
    n_long = len(encode_conversation(tok, check_messages(CONV, "t"), None, "t"))
    n_short = len(encode_conversation(tok, check_messages(CONV[:2], "t"), None, "t"))
    data = load_conversations(path, "sft.train", tok, SFTConfig(max_length=n_long - 1))
    assert data.stats["dropped_too_long"] == 1 and [len(c) for c in data.conversations] == [n_short]
    with pytest.raises(ScirlError, match=f"row 1: {n_long} tokens, longer than sft.max_length={n_long - 1}"):
        load_conversations(path, "sft.train", tok, SFTConfig(max_length=n_long - 1, truncation="error"))


@pytest.mark.parametrize("row,message", [
    ({"messages": [{"role": "robot", "content": "x"}]}, "row 2, message 0: role 'robot' is not one of"),
    ({"messages": [{"role": "user", "content": "x"}]}, "row 2: no assistant message"),
    ({"messages": "hi"}, "row 2: messages must be a non-empty list"),
    ({"conversation": []}, "row 2: no 'messages' field"),
    ({"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]},
     "row 2, message 0: content must be a string"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
     "row 2, message 1: a tool call needs function.name"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}]},
     "row 2, message 1: tool call 'f': arguments are not valid JSON"),
    ({"messages": CONV, "tools": "{nope"}, "row 2: tools is a string but not valid JSON"),
    ({"messages": [{"role": "assistant", "content": "y"}]}, "row 2: the conversation starts with an assistant"),
])
def test_bad_rows_are_one_line_errors_naming_file_and_row(tok, tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [{"messages": CONV}, row])
    with pytest.raises(ScirlError) as e:
        load_conversations(str(path), "sft.train", tok, SFTConfig())
    assert str(e.value).startswith(f"sft.train: {path} ") and message in str(e.value)
    assert "\n" not in str(e.value)
