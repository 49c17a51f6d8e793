"""Supervised fine-tuning on multi-turn conversations with tools (`scirl sft`): data and the assistant-only label
mask (data.py), padding-free packing (packing.py), the optimizer step (step.py), the run (loop.py)."""
