"""`scirl serve`: a small OpenAI-compatible chat-completions server for a local model (e.g. a judge)."""

from scirl.serve.server import USAGE, help_text, main

__all__ = ["USAGE", "help_text", "main"]
