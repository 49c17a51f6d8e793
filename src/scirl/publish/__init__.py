"""What a run publishes: PNG plots, a self-contained HTML report (and, from other helpers, a model card)."""
