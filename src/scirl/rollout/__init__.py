"""Rollout engines: the Trajectories type and the transformers engine."""
