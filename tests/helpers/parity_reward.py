"""A user reward for the multi-process DAPO test (`reward.name=tests/helpers/parity_reward.py:score`): the parity of
the sum of the response's character codes, so that the tiny model's groups have a mixed accuracy often enough for
dynamic sampling to keep some groups and drop others."""


def score(sample, completion, info):
    return float(sum(map(ord, completion)) % 2)
