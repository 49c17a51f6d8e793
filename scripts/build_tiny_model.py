"""Build the bundled tiny Qwen3 checkpoint (src/scirl/assets/tiny-qwen3) reproducibly from the synthetic physics task.

Usage:  python scripts/build_tiny_model.py [--out DIR] [--steps N] [--seed S] [--noise F] [--eval-prompts K]

Steps (all seeded; two builds with the same arguments on the same torch build give the same files):
  1. Train a byte-level BPE tokenizer (`tokenizers`) on the TRAIN split's questions and responses; digits are
     split into single-digit tokens (pre_tokenizers.Digits(individual_digits=True) before ByteLevel) so that
     arithmetic is learnable. Special tokens <|endoftext|> (pad), <|im_start|>, <|im_end|> (eos); <think> and
     </think> are added (non-special, like Qwen3). Saved as a PreTrainedTokenizerFast with a Qwen3-style
     chat template (optional system message, `add_generation_prompt`, `enable_thinking=False`).
  2. Randomly initialise a small Qwen3ForCausalLM (float32, tied embeddings).
  3. SFT on the TRAIN split only: chat-template prompt (add_generation_prompt=True), loss only on the response
     and its <|im_end|>. AdamW, linear warmup then cosine decay, grad-clip 1.0.
  4. Measure on `make_problems("val", K, seed=0)`: mean@8 (T=1.0, top_p=1.0, no top-k, 48 new tokens) and
     greedy accuracy, and write build_info.json.

NOISE SCHEME (deliberate, so that the model is right only some of the time but RL can fix it): each time a
training example is drawn, with probability `--noise` (default 0.6) its response is replaced by a plausible
wrong one, keeping the format intact:
  * half of the noisy draws are an arithmetic slip: the worked line and the boxed value end in
    answer +-1 or +-2 (e.g. "F = m*a = 3*4 = 13 ... \\boxed{13}");
  * the other half use a wrong operation: a*b -> a+b, a/b -> a-b, and for kinetic energy the /2 is dropped
    (e.g. "F = m*a = 3+4 = 7 ... \\boxed{7}").
Fresh noise is drawn for every draw, so the model learns a distribution in which the correct answer is the
single most likely one (greedy accuracy is high) but sampled at T=1 it is correct well below half the time.
GRPO only has to sharpen the operator token and the result digits, which it does quickly.

Scoring (the same rule as the `boxed_numeric` reward): the integer inside the LAST \\boxed{...} must equal the
answer; see `score_response`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from scirl.data import synthetic as syn  # noqa: E402

DEFAULT_OUT = REPO / "src" / "scirl" / "assets" / "tiny-qwen3"
PAD, IM_START, IM_END, THINK, END_THINK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

MODEL_DIMS = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=384,
    max_position_embeddings=256,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_INT = re.compile(r"[-+]?\d+")


def score_response(text: str, answer: str) -> float:
    """1.0 if the integer in the last \\boxed{...} of `text` equals the integer `answer`, else 0.0."""
    found = _BOXED.findall(text)
    if not found:
        return 0.0
    got = found[-1].strip()
    return 1.0 if _INT.fullmatch(got) and int(got) == int(answer) else 0.0


# ----------------------------------------------------------------------------------------------- noise


def noisy_response(topic: str, numbers: tuple[int, ...], rng: random.Random, noise: float) -> str:
    """A training response: the reference solution, or (with probability `noise`) a plausible wrong one."""
    ans = syn.answer_of(topic, numbers)
    if rng.random() >= noise:
        return syn.solution_text(topic, numbers, ans)
    if rng.random() < 0.5:  # arithmetic slip on the result
        wrong = ans + rng.choice([d for d in (-2, -1, 1, 2) if ans + d > 0])
        return syn.format_response(syn.work_line(topic, numbers, wrong), wrong)
    # wrong operation in the worked line: "sym = formula = a*b = r" -> a+b / a-b / drop the /2
    parts = syn.work_line(topic, numbers, ans).split(" = ")
    a, b = numbers
    if topic == "kinetic_energy":
        parts[2], wrong = f"{a}*{b * b}", a * b * b
    elif "*" in parts[2]:
        parts[2], wrong = f"{a}+{b}", a + b
    else:
        parts[2], wrong = f"{a}-{b}", a - b
    if wrong == ans or wrong <= 0:  # e.g. 2*2 == 2+2: fall back to a slip
        wrong = ans + 1
    parts[3] = str(wrong)
    return syn.format_response(" = ".join(parts), wrong)


# ------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    rng = random.Random(seed)
    corpus = []
    for topic, nums in syn.all_keys("train"):
        corpus.append(syn.question_text(topic, nums))
        for _ in range(2):
            corpus.append(noisy_response(topic, nums, rng, 0.5).replace(THINK, "").replace(END_THINK, ""))
    corpus += ["user", "assistant", "system", "You are a helpful assistant."] * 8
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, IM_START, IM_END)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK, END_THINK)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_DIMS["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def check_tokenizer(tok: PreTrainedTokenizerFast) -> None:
    for s in [syn.solution_text("force", (3, 4)), syn.solution_text("kinetic_energy", (4, 3)), "a\n\n b  c\t{}"]:
        back = tok.decode(tok.encode(s, add_special_tokens=False))
        if back != s:
            raise SystemExit(f"tokenizer does not round-trip {s!r}: got {back!r}")
    digits = tok.encode("1234567890", add_special_tokens=False)
    if len(digits) != 10:
        raise SystemExit("digits are not single tokens")


# ------------------------------------------------------------------------------------------------- SFT


def encode_prompt(tok, sample) -> list[int]:
    return list(tok.apply_chat_template(sample.messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def make_batch(tok, prompts, rows, rng, noise):
    """rows: list of (index, topic, numbers). Returns input_ids, attention_mask, labels (right-padded)."""
    im_end = tok.convert_tokens_to_ids(IM_END)
    seqs, labs = [], []
    for i, topic, nums in rows:
        resp = tok.encode(noisy_response(topic, nums, rng, noise), add_special_tokens=False) + [im_end]
        seqs.append(prompts[i] + resp)
        labs.append([-100] * len(prompts[i]) + resp)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for r, (s, lab) in enumerate(zip(seqs, labs)):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
        labels[r, : len(s)] = torch.tensor(lab)
    return ids, mask, labels


def sft(model, tok, args) -> None:
    train = syn.make_problems("train", len(syn.all_keys("train")), seed=args.seed)
    keys = [(i, s.metadata["topic"], tuple(s.metadata["numbers"])) for i, s in enumerate(train)]
    prompts = [encode_prompt(tok, s) for s in train]
    rng = random.Random(args.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, min(50, args.steps // 10))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, args.steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    t0, order = time.time(), []
    for step in range(args.steps):
        if len(order) < args.batch_size:
            extra = keys[:]
            rng.shuffle(extra)
            order += extra
        rows, order = order[: args.batch_size], order[args.batch_size :]
        ids, mask, labels = make_batch(tok, prompts, rows, rng, args.noise)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"  sft step {step:4d}/{args.steps}  loss {loss.item():.3f}  "
                  f"lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:.0f}s", flush=True)
    model.eval()


# ------------------------------------------------------------------------------------------------ eval


@torch.no_grad()
def evaluate(model, tok, n_prompts: int, n_samples: int = 8, max_new_tokens: int = 48, seed: int = 0) -> dict:
    """Held-out mean@n_samples (T=1, top_p=1) and greedy accuracy on make_problems('val', n_prompts, seed=0)."""
    val = syn.make_problems("val", n_prompts, seed=0)
    prompts = [encode_prompt(tok, s) for s in val]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):  # left padding
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    common = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

    def texts(out):
        return [tok.decode(o[width:], skip_special_tokens=True) for o in out]

    greedy = texts(model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **common))
    torch.manual_seed(seed)
    sampled = texts(
        model.generate(
            input_ids=ids.repeat_interleave(n_samples, 0),
            attention_mask=mask.repeat_interleave(n_samples, 0),
            do_sample=True, temperature=1.0, top_p=1.0, top_k=0, **common,
        )
    )
    g = [score_response(t, s.answer) for t, s in zip(greedy, val)]
    m = [score_response(t, val[i // n_samples].answer) for i, t in enumerate(sampled)]
    boxed = sum(1 for t in sampled if _BOXED.search(t)) / len(sampled)
    print("  sample responses:")
    for t, s in list(zip(sampled[::n_samples], val))[:3]:
        print(f"    answer {s.answer:>4}: {t!r}")
    return {
        "val_prompts": n_prompts,
        "samples_per_prompt": n_samples,
        "val_mean_at_8": round(sum(m) / len(m), 4),
        "val_greedy_acc": round(sum(g) / len(g), 4),
        "val_boxed_rate": round(boxed, 4),
    }


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.6, help="fraction of SFT responses made wrong on purpose")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab-size", type=int, default=512, help="BPE vocab before the 5 added tokens")
    ap.add_argument("--eval-prompts", type=int, default=64, help="val prompts for the final eval (0 = skip)")
    args = ap.parse_args(argv)

    t0 = time.time()
    torch.set_num_threads(2)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    tok = build_tokenizer(args.vocab_size, args.seed)
    check_tokenizer(tok)
    print(f"tokenizer: {len(tok)} tokens", flush=True)

    config = Qwen3Config(
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
        **MODEL_DIMS,
    )
    torch.manual_seed(args.seed)
    model = Qwen3ForCausalLM(config).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen3ForCausalLM, {n_params:,} parameters", flush=True)

    sft(model, tok, args)
    info = {
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "noise_fraction": args.noise,
        "noise_scheme": "per draw, with prob noise: half +-1/+-2 result slips, half wrong operation "
                        "(a*b->a+b, a/b->a-b, KE drops /2); worked line and \\boxed{} stay consistent",
        "vocab_size": len(tok),
        "param_count": n_params,
        "model_dims": MODEL_DIMS,
        "torch_version": torch.__version__,
    }
    if args.eval_prompts > 0:
        info.update(evaluate(model, tok, args.eval_prompts))
        print(f"val mean@8 = {info['val_mean_at_8']:.3f}   greedy acc = {info['val_greedy_acc']:.3f}   "
              f"boxed rate = {info['val_boxed_rate']:.3f}", flush=True)
    info["build_seconds"] = round(time.time() - t0, 1)

    save_model(model, tok, info, Path(args.out), t0)
    return 0


def save_model(model, tok, info: dict, out: Path, t0: float) -> None:
    """Write the model (sampling defaults in its generation config), tokenizer and build_info.json to a fresh `out`."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=48,
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB) in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
