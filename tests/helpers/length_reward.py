"""A user reward that varies within a group (`reward.name=tests/helpers/length_reward.py:score`): the sum of the
completion's character codes modulo 7, scaled to [0, 1). Short runs of the tiny model (whose completions all run
to max_new_tokens) then have non-zero advantages, so every step really changes the weights and the optimizer
moments that the checkpoint tests compare."""


def score(sample, completion, info):
    return (sum(map(ord, completion)) % 7) / 7
