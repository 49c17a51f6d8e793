"""Named datasets -> lists of Samples, prompt tokenization, and the seeded, resumable prompt sampler."""

from __future__ import annotations

from typing import Callable

import torch

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.registry import lookup, register_in

# name -> loader(split, size, seed) -> list[Sample]
DATASETS: dict[str, Callable[[str, int, int], list[Sample]]] = {}


def register_dataset(name: str):
    return register_in(DATASETS, "dataset", name)


@register_dataset("tiny_physics")
def _tiny_physics(split: str, size: int, seed: int) -> list[Sample]:
    from scirl.data.synthetic import make_problems

    return make_problems(split, size, seed=seed)


def load_dataset_split(name: str, split: str, size: int, seed: int) -> list[Sample]:
    try:
        loader = lookup(DATASETS, "dataset", name)
    except ScirlError as e:
        raise ScirlError(f"data.{split}: {e}") from None
    samples = loader(split, size, seed)
    if not samples:
        raise ScirlError(f"data.{split}: dataset '{name}' is empty (size={size})")
    return samples


def tokenize_prompts(samples: list[Sample], tokenizer, max_len: int, enable_thinking: bool, key: str):
    """Chat-template each prompt; drop (and count) those longer than max_len tokens."""
    kept, ids = [], []
    for s in samples:
        out = tokenizer.apply_chat_template(
            s.messages, add_generation_prompt=True, tokenize=True, enable_thinking=enable_thinking
        )
        tokens = list(out["input_ids"] if hasattr(out, "keys") else out)
        if len(tokens) <= max_len:
            kept.append(s)
            ids.append(tokens)
    if not kept:
        raise ScirlError(f"{key}: every prompt is longer than data.max_prompt_length={max_len} tokens")
    return kept, ids, len(samples) - len(kept)


class PromptSampler:
    """Epoch-wise seeded permutation of prompt indices; its state (epoch, position) resumes exactly."""

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True):
        if batch_size > size:
            raise ScirlError(f"data.train_batch_size={batch_size} is larger than the train set ({size} prompts)")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def next_batch(self) -> list[int]:
        if self.position + self.batch_size > self.size:  # drop the ragged tail, like drop_last=True
            self.epoch, self.position = self.epoch + 1, 0
        batch = self._order()[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
