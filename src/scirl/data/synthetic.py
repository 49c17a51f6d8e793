"""Seeded generator of tiny physics word problems with small exact integer answers (the `tiny_physics` task).

Every problem is identified by a *key* ``(topic, numbers)``. A stable hash of the key assigns it to
exactly one split, so train and val are disjoint by construction (no key, and therefore no prompt,
is shared) and each split holds every key at most once (no duplicate prompts). ``make_problems``
shuffles the keys of one split with ``random.Random(seed)`` and returns the first ``n``.

Each Sample carries ``metadata["solution"]``: a short reference response in the format the bundled
model is trained to produce, e.g. ``"<think>\\nF = m*a = 3*4 = 12\\n</think>\\n\\n\\boxed{12}"``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable

from scirl.data.sample import Sample
from scirl.errors import ScirlError

DATA_SOURCE = "tiny_physics"
SPLITS = ("train", "val")
VAL_FRACTION = 0.25  # share of all problem keys that land in "val"
INSTRUCTION = "Put the final answer in \\boxed{}."

_R = range(2, 13)  # factors 2..12 keep every answer a small exact integer


@dataclass(frozen=True)
class _Topic:
    name: str
    names: tuple[str, ...]  # names of the given quantities, in the order of `numbers`
    keys: Callable[[], list[tuple[int, ...]]]  # every valid tuple of given numbers
    answer: Callable[[tuple[int, ...]], int]
    work: Callable[[tuple[int, ...], int], str]  # the worked line(s), given numbers and the answer shown
    questions: tuple[str, ...]  # phrasings, formatted with the numbers as {0}, {1}


def _pairs() -> list[tuple[int, int]]:
    return [(a, b) for a in _R for b in _R]


def _div_pairs() -> list[tuple[int, int]]:
    # (dividend, divisor) with an exact quotient in 2..12
    return [(q * b, b) for q in _R for b in _R]


def _ke_keys() -> list[tuple[int, int]]:
    return [(m, v) for m in _R for v in range(1, 7) if (m * v * v) % 2 == 0]


def _prod(sym: str, a: str, b: str) -> Callable[[tuple[int, ...], int], str]:
    return lambda x, ans: f"{sym} = {a}*{b} = {x[0]}*{x[1]} = {ans}"


def _quot(sym: str, a: str, b: str) -> Callable[[tuple[int, ...], int], str]:
    return lambda x, ans: f"{sym} = {a}/{b} = {x[0]}/{x[1]} = {ans}"


def _ke_work(x: tuple[int, ...], ans: int) -> str:
    m, v = x
    return f"KE = m*v^2/2 = {m}*{v * v}/2 = {ans}"


_TOPICS: tuple[_Topic, ...] = (
    _Topic("distance", ("v", "t"), _pairs, lambda x: x[0] * x[1], _prod("d", "v", "t"), (
        "A car moves at {0} m/s for {1} s. How far does it travel, in meters?",
        "A runner keeps a speed of {0} m/s for {1} s. What distance is covered, in meters?",
    )),
    _Topic("speed", ("d", "t"), _div_pairs, lambda x: x[0] // x[1], _quot("v", "d", "t"), (
        "A bike covers {0} m in {1} s at constant speed. What is its speed, in m/s?",
        "A ball rolls {0} m in {1} s at constant speed. Find its speed in m/s.",
    )),
    _Topic("force", ("m", "a"), _pairs, lambda x: x[0] * x[1], _prod("F", "m", "a"), (
        "A cart of mass {0} kg accelerates at {1} m/s^2. What net force acts on it, in newtons?",
        "A block of mass {0} kg has an acceleration of {1} m/s^2. Find the net force in N.",
    )),
    _Topic("acceleration", ("F", "m"), _div_pairs, lambda x: x[0] // x[1], _quot("a", "F", "m"), (
        "A net force of {0} N acts on a {1} kg box. What is its acceleration, in m/s^2?",
        "A sled of mass {1} kg is pushed with a net force of {0} N. Find its acceleration in m/s^2.",
    )),
    _Topic("voltage", ("I", "R"), _pairs, lambda x: x[0] * x[1], _prod("V", "I", "R"), (
        "A current of {0} A flows through a resistor of {1} ohm. What is the voltage across it, in volts?",
        "A resistor of {1} ohm carries {0} A. Find the voltage across it in V.",
    )),
    _Topic("current", ("V", "R"), _div_pairs, lambda x: x[0] // x[1], _quot("I", "V", "R"), (
        "A voltage of {0} V is applied across a resistor of {1} ohm. What current flows, in amperes?",
        "A resistor of {1} ohm has {0} V across it. Find the current in A.",
    )),
    _Topic("kinetic_energy", ("m", "v"), _ke_keys, lambda x: x[0] * x[1] * x[1] // 2, _ke_work, (
        "A ball of mass {0} kg moves at {1} m/s. What is its kinetic energy, in joules?",
        "A cart of mass {0} kg rolls at {1} m/s. Find its kinetic energy in J.",
    )),
    _Topic("density", ("m", "V"), _div_pairs, lambda x: x[0] // x[1], _quot("rho", "m", "V"), (
        "A stone has mass {0} kg and volume {1} m^3. What is its density, in kg/m^3?",
        "An object of mass {0} kg fills {1} m^3. Find its density in kg/m^3.",
    )),
    _Topic("momentum", ("m", "v"), _pairs, lambda x: x[0] * x[1], _prod("p", "m", "v"), (
        "A cart of mass {0} kg moves at {1} m/s. What is its momentum, in kg*m/s?",
        "A ball of mass {0} kg travels at {1} m/s. Find its momentum in kg*m/s.",
    )),
    _Topic("work", ("F", "d"), _pairs, lambda x: x[0] * x[1], _prod("W", "F", "d"), (
        "A force of {0} N pushes a box {1} m along its direction. How much work is done, in joules?",
        "A constant {0} N force moves a crate {1} m. Find the work done in J.",
    )),
    _Topic("power", ("W", "t"), _div_pairs, lambda x: x[0] // x[1], _quot("P", "W", "t"), (
        "A motor does {0} J of work in {1} s. What is its power, in watts?",
        "A lamp uses {0} J of energy in {1} s. Find its power in W.",
    )),
    _Topic("pressure", ("F", "A"), _div_pairs, lambda x: x[0] // x[1], _quot("P", "F", "A"), (
        "A force of {0} N presses evenly on an area of {1} m^2. What is the pressure, in pascals?",
        "A crate weighing {0} N rests on {1} m^2 of floor. Find the pressure in Pa.",
    )),
)

TOPICS: list[str] = [t.name for t in _TOPICS]
_BY_NAME = {t.name: t for t in _TOPICS}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _key_str(topic: str, numbers: tuple[int, ...]) -> str:
    return f"{topic}:" + ",".join(str(n) for n in numbers)


def split_of(topic: str, numbers: tuple[int, ...]) -> str:
    """The one split a problem key belongs to (stable: depends only on the key)."""
    h = int(_digest("split|" + _key_str(topic, numbers))[:8], 16)
    return "val" if h / 0xFFFFFFFF < VAL_FRACTION else "train"


def all_keys(split: str | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Every (topic, numbers) key in a fixed order, optionally only those of one split."""
    out = []
    for t in _TOPICS:
        for nums in t.keys():
            if split is None or split_of(t.name, nums) == split:
                out.append((t.name, tuple(nums)))
    return out


def answer_of(topic: str, numbers: tuple[int, ...]) -> int:
    """The exact integer answer of a problem key."""
    return _BY_NAME[topic].answer(tuple(numbers))


def question_text(topic: str, numbers: tuple[int, ...]) -> str:
    """The user message: one phrasing picked by a stable hash of the key, plus the boxed instruction."""
    t = _BY_NAME[topic]
    pick = int(_digest("phrase|" + _key_str(topic, numbers))[:8], 16) % len(t.questions)
    return t.questions[pick].format(*numbers) + " " + INSTRUCTION


def work_line(topic: str, numbers: tuple[int, ...], answer: int) -> str:
    """The worked line ending in `answer` (which may be a deliberately wrong value, see the model builder)."""
    return _BY_NAME[topic].work(tuple(numbers), answer)


def format_response(work: str, answer: int) -> str:
    """Wrap a worked line and a final answer into the response format: think block, then \\boxed{}."""
    return f"<think>\n{work}\n</think>\n\n\\boxed{{{answer}}}"


def solution_text(topic: str, numbers: tuple[int, ...], answer: int | None = None) -> str:
    """A short reference response, e.g. '<think>\\nF = m*a = 3*4 = 12\\n</think>\\n\\n\\boxed{12}'."""
    ans = answer_of(topic, numbers) if answer is None else int(answer)
    return format_response(work_line(topic, numbers, ans), ans)


def make_sample(split: str, topic: str, numbers: tuple[int, ...]) -> Sample:
    """The Sample of one problem key."""
    numbers = tuple(numbers)
    ans = answer_of(topic, numbers)
    return Sample(
        prompt_id=f"{DATA_SOURCE}/{split}/{_digest(_key_str(topic, numbers))[:12]}",
        messages=[{"role": "user", "content": question_text(topic, numbers)}],
        answer=str(ans),
        answer_type="numeric",
        data_source=DATA_SOURCE,
        metadata={"topic": topic, "numbers": list(numbers), "solution": solution_text(topic, numbers, ans)},
    )


def make_problems(split: str, n: int, seed: int = 0) -> list[Sample]:
    """`n` distinct problems of `split` ("train" or "val"), the same list for the same seed."""
    if split not in SPLITS:
        raise ScirlError(f"tiny_physics: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    keys = all_keys(split)
    if n < 0 or n > len(keys):
        raise ScirlError(f"tiny_physics: asked for {n} problems but split {split!r} has {len(keys)} distinct ones")
    random.Random(f"tiny_physics|{split}|{seed}").shuffle(keys)
    return [make_sample(split, topic, nums) for topic, nums in keys[:n]]
