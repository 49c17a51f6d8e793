"""A user reward for the crash tests (`reward.name=tests/helpers/blocking_reward.py:score`): it counts its calls in
$SCIRL_TEST_COUNTER and, on call number $SCIRL_TEST_BLOCK_AT, creates $SCIRL_TEST_MARKER and waits until
$SCIRL_TEST_RELEASE exists, so a test knows the trainer is in the middle of a step. It scores as boxed_numeric."""

import os
import time

from scirl.rewards import get_reward


def score(sample, completion, info):
    fd = os.open(os.environ["SCIRL_TEST_COUNTER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:  # O_APPEND: one byte per call, whichever worker makes it; our offset after it is this call's number
        os.write(fd, b"x")
        call = os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)
    if call == int(os.environ.get("SCIRL_TEST_BLOCK_AT", "0")):
        open(os.environ["SCIRL_TEST_MARKER"], "w").close()
        while not os.path.exists(os.environ["SCIRL_TEST_RELEASE"]):
            time.sleep(0.01)
    return get_reward("boxed_numeric")(sample, completion, info)
