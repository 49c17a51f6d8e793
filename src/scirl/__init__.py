"""scirl: reinforcement-learning post-training of reasoning language models on science and math."""

__version__ = "0.1.0"
