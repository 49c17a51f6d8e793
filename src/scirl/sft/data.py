"""SFT data: conversations read from local .json / .jsonl / .parquet rows (`messages` + optional `tools`), checked,
and tokenized with the chat template into token ids and a label mask that is 1 on assistant tokens only.

Row format (the Hugging Face chat format): `messages` is a list of {role, content} with role system | user |
assistant | tool; an assistant message may carry `tool_calls` ([{"type": "function", "function": {"name": ...,
"arguments": {...} or a JSON string}}]) and `reasoning_content`; a tool message may carry `name`. `tools` (optional)
is a list of JSON schemas, or a JSON string of one, passed to the template's `tools=` argument. A bad row is one
line naming the file, the row and what is wrong.

The layout is the one a multi-turn RL rollout produces (scirl.agent.rollout, hermes.tool_response_ids), so SFT
trains exactly the tokens the model later generates:
- each assistant turn i is rendered relative to its own prompt: the text that `render(messages[:i+1])` adds to
  `render(messages[:i], add_generation_prompt=True)`, tokenized on its own (as the model generates it after the
  tokenized prompt) and cut after the end-of-turn (eos) token. They get label 1: the
  content (thinking and tool calls included) and the end-of-turn token; the generation header
  (`<|im_start|>assistant\\n`) and the newline after the end-of-turn token get 0, as they are template tokens in a
  rollout;
- the template tokens between two assistant turns (tool or user turns and the next generation header) are the
  generation prompt of the next turn after its k-th end-of-turn token, k = the end-of-turn tokens so far (as
  hermes.tool_response_ids cuts them). Qwen3's template re-renders earlier assistant turns (it drops their empty
  `<think>` blocks); counting end-of-turn tokens keeps each assistant turn as it was rendered when it was the
  last, i.e. as the model generated it. A template without an eos end-of-turn token must be prefix-preserving;
  where an assistant turn does not extend its own generation prompt the row fails with one line.
Messages after the last assistant turn add nothing to train on and are left out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from scirl.data.local_files import read_rows
from scirl.errors import ScirlError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Conversation:
    ids: list[int]
    mask: list[int]  # 1 on the tokens the loss is on (assistant content + end-of-turn), 0 elsewhere

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ConversationSet:
    path: str
    conversations: list[Conversation]
    stats: dict = field(default_factory=dict)  # rows, kept, dropped_too_long, tokens, assistant_tokens


# ------------------------------------------------------------------------------------------------ checking rows
def _tool_call(call: Any, where: str) -> dict:
    if not isinstance(call, dict):
        raise ScirlError(f"{where}: a tool call must be an object, got {type(call).__name__}")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ScirlError(f"{where}: a tool call needs function.name (a string)")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise ScirlError(f"{where}: tool call {fn['name']!r}: arguments are not valid JSON") from None
    if not isinstance(args, dict):
        raise ScirlError(f"{where}: tool call {fn['name']!r}: arguments must be an object")
    return {"type": "function", "function": {"name": fn["name"], "arguments": args}}


def check_messages(messages: Any, where: str) -> list[dict]:
    """The row's messages, normalised (None fields dropped, content None -> ""); one line when malformed."""
    if not isinstance(messages, list) or not messages:
        raise ScirlError(f"{where}: messages must be a non-empty list of {{role, content}}")
    out = []
    for j, m in enumerate(messages):
        at = f"{where}, message {j}"
        if not isinstance(m, dict):
            raise ScirlError(f"{at}: a message must be an object, got {type(m).__name__}")
        m = {k: v for k, v in m.items() if v is not None}  # parquet fills absent struct fields with null
        if m.get("role") not in ROLES:
            raise ScirlError(f"{at}: role {m.get('role')!r} is not one of {', '.join(ROLES)}")
        content = m.get("content", "")
        if not isinstance(content, str):
            raise ScirlError(f"{at}: content must be a string, got {type(content).__name__}")
        m["content"] = content
        if "tool_calls" in m:
            if m["role"] != "assistant":
                raise ScirlError(f"{at}: only assistant messages carry tool_calls")
            if not isinstance(m["tool_calls"], list):
                raise ScirlError(f"{at}: tool_calls must be a list")
            m["tool_calls"] = [_tool_call(c, at) for c in m["tool_calls"]] or None
            if m["tool_calls"] is None:
                del m["tool_calls"]
        out.append(m)
    if not any(m["role"] == "assistant" for m in out):
        raise ScirlError(f"{where}: no assistant message (nothing to train on)")
    return out


def check_tools(tools: Any, where: str) -> list[dict] | None:
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            raise ScirlError(f"{where}: tools is a string but not valid JSON") from None
    if tools is None:  # "null": a parquet column of JSON strings
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ScirlError(f"{where}: tools must be a list of JSON schemas (objects)")
    return tools or None


# ------------------------------------------------------------------------------------------------ tokenizing
def _render(tokenizer, messages: list[dict], tools, gen: bool, kwargs: dict) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, tokenize=False, **kwargs)


def _tokens(tokenizer, text: str) -> list[int]:
    # as apply_chat_template(tokenize=True) does; no "longer than model_max_length" warning: sft.max_length rules
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def _template_tokens(prompt: list[int], ids: list[int], eos: int | None, where: str) -> list[int]:
    """The tokens of `prompt` (the next assistant turn's generation prompt) that follow what is built so far."""
    k = ids.count(eos) if eos is not None else 0
    if k:
        eos_at = [i for i, t in enumerate(prompt) if t == eos]
        if len(eos_at) >= k:
            return prompt[eos_at[k - 1] + 1:]
    elif prompt[: len(ids)] == ids:
        return prompt[len(ids):]
    raise ScirlError(f"{where}: the chat template re-renders the earlier turns differently and its turns do not end "
                     "with the eos token: cannot place the assistant tokens")


def encode_conversation(tokenizer, messages: list[dict], tools: list[dict] | None, where: str,
                        **template_kwargs: Any) -> Conversation:
    """Token ids and the assistant-only label mask of one checked conversation (module docstring)."""
    eos = tokenizer.eos_token_id
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ids: list[int] = []
    mask: list[int] = []
    for i in range(last + 1):
        if messages[i]["role"] != "assistant":
            continue
        if i == 0:
            raise ScirlError(f"{where}: the conversation starts with an assistant message; it needs the message it "
                             "answers (system or user) before it")
        prompt_text = _render(tokenizer, messages[:i], tools, True, template_kwargs)
        full_text = _render(tokenizer, messages[: i + 1], tools, False, template_kwargs)
        if not full_text.startswith(prompt_text):
            raise ScirlError(f"{where}, message {i}: the chat template renders this assistant turn so that it does "
                             "not extend its own generation prompt: cannot mark its tokens")
        # the prompt and the turn tokenized apart, as in a rollout (the model's tokens follow the prompt's)
        prompt, turn = _tokens(tokenizer, prompt_text), _tokens(tokenizer, full_text[len(prompt_text):])
        if eos is not None and eos in turn:
            turn = turn[: turn.index(eos) + 1]  # content + end-of-turn; the "\n" after it is the template's
        between = _template_tokens(prompt, ids, eos, f"{where}, message {i}")
        ids += between + turn
        mask += [0] * len(between) + [1] * len(turn)
    return Conversation(ids, mask)


def load_conversations(path: str, key: str, tokenizer, sft, **template_kwargs: Any) -> ConversationSet:
    """Read, check and tokenize every row of `path` (the config key `key` names it in errors). Conversations
    longer than sft.max_length are dropped (counted) or, with sft.truncation=error, a one-line error."""
    rows = read_rows(path, key)
    if not rows:
        raise ScirlError(f"{key}: {path} holds no rows")
    convs, dropped, longest = [], 0, 0
    for n, row in rows:
        where = f"{key}: {path} row {n}"
        if sft.messages_key not in row:
            raise ScirlError(f"{where}: no {sft.messages_key!r} field (sft.messages_key); fields: "
                             f"{', '.join(sorted(row)) or '(none)'}")
        messages = check_messages(row[sft.messages_key], where)
        tools = check_tools(row.get(sft.tools_key), where)
        conv = encode_conversation(tokenizer, messages, tools, where, **template_kwargs)
        if len(conv) > sft.max_length:
            if sft.truncation == "error":
                raise ScirlError(f"{where}: {len(conv)} tokens, longer than sft.max_length={sft.max_length} "
                                 "(sft.truncation=drop leaves such rows out)")
            dropped += 1
            longest = max(longest, len(conv))
            continue
        convs.append(conv)
    if not convs:
        raise ScirlError(f"{key}: every row of {path} is longer than sft.max_length={sft.max_length} (the longest "
                         f"has {longest} tokens)")
    stats = {"rows": len(rows), "kept": len(convs), "dropped_too_long": dropped,
             "tokens": sum(len(c) for c in convs), "assistant_tokens": sum(sum(c.mask) for c in convs)}
    return ConversationSet(str(path), convs, stats)
