"""Run logging: console progress and tables, metrics.jsonl."""
