"""The rollout evaluation of an SFT run (placeholder: off until implemented)."""

from __future__ import annotations


class RolloutEval:
    def __init__(self, cfg, tokenizer, run_dir, sinks, note):
        self.cfg = cfg

    def run(self, model, step: int):
        return None

    def read(self, step: int):
        return None

    def print_table(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass
