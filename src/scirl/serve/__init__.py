"""`scirl serve`: a small OpenAI-compatible chat-completions server for a local model (e.g. a judge)."""

from scirl.serve.server import USAGE, main

__all__ = ["USAGE", "main"]
