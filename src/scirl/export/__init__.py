"""Turning checkpoints into plain Hugging Face folders: `scirl export` (a scirl checkpoint, HF or DCP) and
`scirl merge --from verl` (verl's per-rank FSDP shards)."""
