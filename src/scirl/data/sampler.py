"""Which prompts each training step gets: seeded epoch permutations, optionally mixed across sources by weight.

Both samplers resume exactly from their `state_dict()`.
"""

from __future__ import annotations

import torch

from scirl.errors import ScirlError


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

    def take(self, count: int) -> list[int]:
        """`count` indices, continuing the current permutation and starting a new epoch when it runs out."""
        out: list[int] = []
        while len(out) < count:
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
            order = self._order()
            chunk = order[self.position : self.position + count - len(out)]
            self.position += len(chunk)
            out += chunk
        return out

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


class MixturePromptSampler:
    """Each batch draws its source of every slot with probability proportional to the source weights (a seeded
    multinomial per step), then takes that many prompts from the source's own epoch permutation.

    `offsets[i]` is where source i starts in the concatenated prompt list; indices returned are global.
    """

    def __init__(self, sizes: list[int], weights: list[float], batch_size: int, seed: int, shuffle: bool = True):
        if len(sizes) != len(weights) or not sizes:
            raise ScirlError("data.train: one weight per source is needed")
        if any(w <= 0 for w in weights):
            raise ScirlError(f"data.train: mixing weights must be > 0, got {weights}")
        total = float(sum(weights))
        self.probs = torch.tensor([w / total for w in weights], dtype=torch.float64)
        self.batch_size, self.seed, self.step = batch_size, seed, 0
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.sources = [PromptSampler(n, 1, seed + 7 * (i + 1), shuffle) for i, n in enumerate(sizes)]

    @property
    def epoch(self) -> int:
        """Epochs completed by the slowest source."""
        return min(s.epoch for s in self.sources)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + 17 + self.step)

    def counts(self) -> list[int]:
        """How many prompts each source gives to the next batch (deterministic in seed and step)."""
        picks = torch.multinomial(self.probs, self.batch_size, replacement=True, generator=self._generator())
        return torch.bincount(picks, minlength=len(self.sources)).tolist()

    def next_batch(self) -> list[int]:
        """The sources' prompts, interleaved in a seeded order (so mini-batches mix sources too)."""
        batch: list[int] = []
        for off, src, count in zip(self.offsets, self.sources, self.counts()):
            batch += [off + i for i in src.take(count)]
        order = torch.randperm(len(batch), generator=self._generator()).tolist()
        self.step += 1
        return [batch[i] for i in order]

    def state_dict(self) -> dict:
        return {"step": self.step, "sources": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        for src, st in zip(self.sources, state["sources"]):
            src.load_state_dict(st)
