"""Build the tools-aware tiny Qwen3 (src/scirl/assets/tiny-qwen3-tools, `model.path: builtin:tiny-qwen3-tools`).

Usage:  python scripts/build_tiny_tools_model.py [--out DIR] [--steps N] [--seed S] [--vocab-size V]

The same recipe as scripts/build_tiny_model.py (whose dimensions and special tokens it imports), for the
`tiny_tools` task (scirl.data.synthetic_tools: products of two 4-digit numbers):
  1. A byte-level BPE tokenizer (single-digit tokens) trained on rendered conversations of the task in the Hermes
     tool format, so that the tools block and the call JSON compress to few tokens; `<tool_call>`, `</tool_call>`,
     `<tool_response>`, `</tool_response>` are single added (non-special, as in Qwen3) tokens. Its chat template
     (CHAT_TEMPLATE) renders `tools=` as a compact Hermes system block (each tool's name and argument names,
     `{"name": "calculator", "arguments": ["expression"]}`: descriptions and types would triple a tiny model's
     prompt), assistant `tool_calls` as
     `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>` and tool messages as Qwen3 does
     (`<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>`).
  2. A random-init Qwen3ForCausalLM (MODEL_DIMS with 512 positions).
  3. "Pretraining" (loss on assistant tokens only) on three kinds of conversation, none with a tool call:
     the task answered directly (`\\boxed{a*b}`, with or without the tools block in the prompt: the model
     learns the format but cannot learn 4-digit products), copying a number from the user text into `\\boxed{}`,
     and writing "a times b" as the expression `a*b`. So the base model has the skills a tool call needs
     (copying digits, the answer format) but never calls a tool: the tool-use behaviour is what the SFT cold
     start (recipes/tiny_sft_tools.yaml) adds, and GRPO (recipes/tiny_grpo_tools.yaml) reinforces.
  4. build_info.json: seed, steps, parameters, seconds, and the base model's held-out direct accuracy and
     tool-call rate (first turn, T=1).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_tiny_model as base  # noqa: E402  (also puts src/ on sys.path)

import torch  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from scirl.data import synthetic_tools as st  # noqa: E402

DEFAULT_OUT = base.REPO / "src" / "scirl" / "assets" / "tiny-qwen3-tools"
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
MODEL_DIMS = {**base.MODEL_DIMS, "max_position_embeddings": 512}

CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}"
    "{%- for tool in tools %}"
    "{%- set f = tool.function if tool.function is defined else tool %}"
    "{{- '\\n{\"name\": ' + (f.name | tojson) + ', \"arguments\": ' }}"
    "{{- ((f.parameters or {}).properties or {}) | list | tojson }}{{- '}' }}"
    "{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + (message.content or '') }}"
    "{%- for tc in message.tool_calls or [] %}"
    "{%- set f = tc.function if tc.function is defined else tc %}"
    "{%- if loop.first and message.content %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + f.name + '\", \"arguments\": ' }}"
    "{{- f.arguments if f.arguments is string else (f.arguments | tojson) }}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# ------------------------------------------------------------------------------------------- corpus


def copy_conversation(rng: random.Random) -> list[dict]:
    """Copy a 6-12 digit number from the user text into \\boxed{} (the skill the answer turn after a tool result
    needs; copying is what a tiny model learns slowest, so it is the largest share of the pretraining)."""
    n = "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 12))).lstrip("0") or "7"
    lead = rng.choice(["The result is {n}.", "Here is a number: {n}.", "{n}", "The value {n} was measured.",
                       "Copy {n}."])
    return [{"role": "user", "content": lead.format(n=n) + " Put it in \\boxed{}."},
            {"role": "assistant", "content": f"\\boxed{{{n}}}"}]


def expression_conversation(rng: random.Random) -> list[dict]:
    """Write 'a times b' as the expression a*b (the skill the call's arguments need)."""
    a, b = rng.randint(st.LO, st.HI), rng.randint(st.LO, st.HI)
    return [{"role": "user", "content": f"Write {a} times {b} as an expression."},
            {"role": "assistant", "content": f"{a}*{b}"}]


def pretrain_row(rng: random.Random, keys: list[tuple[int, int]], tools: list[dict]) -> tuple[list[dict], list]:
    """One pretraining conversation and its tools (None or the calculator schema); never a tool call."""
    r = rng.random()
    if r < 0.3:
        a, b = rng.choice(keys)
        return st.direct_conversation(a, b), (tools if rng.random() < 0.5 else None)
    if r < 0.7:
        return copy_conversation(rng), None
    return expression_conversation(rng), None


def build_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    """BPE over the raw texts of the task's conversations (tool ones included: the format must be cheap)."""
    rng = random.Random(seed)
    tools = [st.calculator_schema()]
    corpus = ['{"name": "calculator", "arguments": ["expression"]}'] * 50 + ["user", "assistant", "system", "tool",
                                                                            "# Tools", "<tools>", "</tools>"] * 20
    for a, b in st.keys("train", 3000, seed=seed):
        conv = st.tool_conversation(a, b)
        corpus += [conv[0]["content"], json.dumps({"name": "calculator", "arguments": {"expression": f"{a}*{b}"}}),
                   conv[2]["content"], conv[3]["content"]]
        corpus += [m["content"] for m in copy_conversation(rng) + expression_conversation(rng)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (base.PAD, base.IM_START,
                                                                                     base.IM_END)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=base.IM_END, pad_token=base.PAD,
                                   chat_template=CHAT_TEMPLATE, model_max_length=MODEL_DIMS["max_position_embeddings"],
                                   clean_up_tokenization_spaces=False)


# ------------------------------------------------------------------------------------------- training


def render(tok, messages: list[dict], tools, generation_prompt: bool = False) -> list[int]:
    return list(tok.apply_chat_template(messages, tools=tools, add_generation_prompt=generation_prompt,
                                        tokenize=True, return_dict=False))


def encode_conversation(tok, messages: list[dict], tools) -> tuple[list[int], list[int]]:
    """(ids, labels): labels are the ids on assistant tokens (their <|im_end|> included), -100 elsewhere; the
    template is prefix-preserving, so each assistant turn is the difference of two prefix renders."""
    ids = render(tok, messages, tools)
    labels = [-100] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(render(tok, messages[:i], tools, generation_prompt=True))
            end = len(render(tok, messages[: i + 1], tools)) - 1  # the trailing "\n" after <|im_end|> is not learnt
            labels[start:end] = ids[start:end]
    return ids, labels


def batch_tensors(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    width = max(len(ids) for ids, _ in pairs)
    ids_t = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids_t)
    labels = torch.full_like(ids_t, -100)
    for r, (ids, lab) in enumerate(pairs):
        ids_t[r, : len(ids)], mask[r, : len(ids)], labels[r, : len(ids)] = (torch.tensor(ids), 1, torch.tensor(lab))
    return ids_t, mask, labels


def train(model, tok, next_batch, steps: int, lr: float, log_every: int = 50) -> None:
    """AdamW, linear warmup then cosine to 10%, grad-clip 1.0; `next_batch()` returns (ids, labels) pairs."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    model.train()
    t0 = time.time()
    for step in range(steps):
        ids, mask, labels = batch_tensors(next_batch(), tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"  step {step:4d}/{steps}  loss {loss.item():.3f}  {time.time() - t0:.0f}s", flush=True)
    model.eval()


@torch.no_grad()
def first_turn_eval(model, tok, n_prompts: int, n_samples: int = 4, seed: int = 0) -> dict:
    """Held-out first turn with the tools block, T=1: fraction of samples that call a tool / answer right."""
    val = st.make_problems("val", n_prompts, seed=0)
    tools = [st.calculator_schema()]
    prompts = [render(tok, s.messages, tools, generation_prompt=True) for s in val]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids.repeat_interleave(n_samples, 0),
                         attention_mask=mask.repeat_interleave(n_samples, 0), do_sample=True, temperature=1.0,
                         top_p=1.0, top_k=0, max_new_tokens=48, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    texts = [tok.decode(o[width:], skip_special_tokens=True) for o in out]
    calls = [TOOL_TOKENS[0] in t for t in texts]
    right = [base.score_response(t, val[i // n_samples].answer) for i, t in enumerate(texts)]
    print("  samples:", *[repr(t) for t in texts[:: n_samples * 16]], sep="\n    ")
    return {"val_prompts": n_prompts, "samples_per_prompt": n_samples,
            "val_tool_call_rate": round(sum(calls) / len(calls), 4),
            "val_direct_acc": round(sum(right) / len(right), 4)}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab-size", type=int, default=600, help="BPE vocab before the 7 added tokens")
    ap.add_argument("--eval-prompts", type=int, default=64)
    args = ap.parse_args(argv)

    t0 = time.time()
    torch.set_num_threads(2)
    random.seed(args.seed)
    tok = build_tokenizer(args.vocab_size, args.seed)
    for t in TOOL_TOKENS:
        if len(tok.encode(t, add_special_tokens=False)) != 1:
            raise SystemExit(f"{t} is not a single token")
    if len(tok.encode("1234567890", add_special_tokens=False)) != 10:
        raise SystemExit("digits are not single tokens")
    tools = [st.calculator_schema()]
    print(f"tokenizer: {len(tok)} tokens; a tool conversation is "
          f"{len(render(tok, st.tool_conversation(1234, 5678), tools))} tokens", flush=True)

    config = Qwen3Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, dtype="float32", **MODEL_DIMS)
    torch.manual_seed(args.seed)
    model = Qwen3ForCausalLM(config).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen3ForCausalLM, {n_params:,} parameters", flush=True)

    rng = random.Random(args.seed + 1)
    keys = st.keys("train", 20_000, seed=args.seed)
    train(model, tok, lambda: [encode_conversation(tok, *pretrain_row(rng, keys, tools))
                               for _ in range(args.batch_size)], args.steps, args.lr)
    info = {"seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "pretraining": "assistant-only loss on: the task answered directly (half with the tools block), "
                           "copying a number into \\boxed{}, writing 'a times b' as a*b; no tool calls",
            "vocab_size": len(tok), "param_count": n_params, "model_dims": MODEL_DIMS,
            "torch_version": torch.__version__}
    if args.eval_prompts > 0:
        info.update(first_turn_eval(model, tok, args.eval_prompts))
        print(f"base: tool-call rate {info['val_tool_call_rate']:.3f}  direct acc {info['val_direct_acc']:.3f}")
    info["build_seconds"] = round(time.time() - t0, 1)

    base.save_model(model, tok, info, Path(args.out), t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
