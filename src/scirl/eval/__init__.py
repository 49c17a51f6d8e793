"""Evaluation: metrics (mean@k, pass@k, best@k, maj@k), the validation runner and `scirl eval`."""
