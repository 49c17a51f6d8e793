"""Atomic checkpoints: save, find the latest, resume."""
