"""Datasets: the Sample schema and the sources that produce it."""

from scirl.data.sample import Sample

__all__ = ["Sample"]
