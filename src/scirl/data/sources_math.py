"""Math datasets: aime24, aime25, amc23, gsm8k, dapo_math_17k (graded by the `math` reward, template cot_boxed).

Reference answers are kept as the source writes them ("025", "27.0" strings, "336^\\circ"): the math reward
grades \\boxed{25} right against "025". JSON numbers become text (27.0 -> "27"). prompt_ids are
"<dataset>/<source id>" for the default variant and "<dataset>/<variant>/<source id>" for a variant that is a
different file with its own ids.
"""

from __future__ import annotations

from scirl.data.datasets import LoadRequest, register_dataset
from scirl.data.local_files import _MISSING, answer_str, build_messages, get_field
from scirl.data.sample import Sample
from scirl.data.sources import Hub, Rows, dataset_rows
from scirl.errors import ScirlError

# DAPO's instruction around every problem (dapo-math-17k and DAPO's aime-2024 eval set; verified on all rows)
DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should be of the "
               "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def strip_dapo_wrapper(content: str) -> str:
    """The raw problem inside DAPO's "Answer: $Answer" instruction (the text unchanged when it is not there)."""
    if content.startswith(DAPO_PREFIX) and content.endswith(DAPO_SUFFIX):
        return content[len(DAPO_PREFIX): len(content) - len(DAPO_SUFFIX)].strip()
    return content


def _first(rows: Rows, n: int, row: dict, names: tuple[str, ...]):
    for name in names:
        value = get_field(row, name)
        if value is not _MISSING and value is not None:
            return value
    return rows.need(n, row, names[0])  # raises, naming the first


def _sample(pid: str, problem: str, answer, meta: dict, answer_type: str = "numeric") -> Sample:
    problem = str(problem)
    return Sample(prompt_id=pid, messages=build_messages(problem), answer=answer_str(answer), answer_type=answer_type,
                  metadata={k: v for k, v in meta.items() if v not in (None, "")}, problem=problem)


def _plain(rows: Rows, prefix: str, *, id_field: str | None = "id", extra: tuple[str, ...] = ()) -> list[Sample]:
    """Rows with a problem (prompt / problem / question), an answer, an optional id and metadata fields."""
    out = []
    for n, row in rows.rows:
        rid = get_field(row, id_field) if id_field else _MISSING
        rid = n - 1 if rid is _MISSING or rid is None else rid
        problem = _first(rows, n, row, ("problem", "prompt", "question"))
        answer = _first(rows, n, row, ("answer",))
        meta = {k: get_field(row, k, None) for k in extra}
        out.append(_sample(f"{prefix}/{rid}", problem, answer, meta))
    return out


def _dapo(rows: Rows, prefix: str, raw_field: str | None, unique_index: bool) -> list[Sample]:
    """DAPO parquet rows: prompt [{content, role}], reward_model.ground_truth, extra_info.index (+ raw_problem)."""
    out, seen = [], {}
    for n, row in rows.rows:
        messages = rows.need(n, row, "prompt")
        content = messages[-1]["content"] if isinstance(messages, (list, tuple)) and messages else str(messages)
        index = rows.need(n, row, "extra_info.index")
        rep = seen.get(index, 0)
        seen[index] = rep + 1
        if unique_index and rep:
            continue  # the hub copy repeats every problem ~100 times; keep one per DAPO index
        problem = rows.need(n, row, raw_field) if raw_field else strip_dapo_wrapper(content)
        pid = f"{prefix}/{index}" if unique_index else f"{prefix}/{index}/{rep}"
        meta = {"source_prompt": content, "index": index}
        if not unique_index:
            meta["repeat"] = rep
        out.append(_sample(pid, problem, rows.need(n, row, "reward_model.ground_truth"), meta))
    return out


@register_dataset("aime24", reward="math", template="cot_boxed", variants=("qwen", "opd", "dapo"),
                  description="AIME 2024, 30 problems: qwen (Qwen2.5-Math copy), opd (zero-padded answers), "
                              "dapo (DAPO eval set, 30 x 32 repeats = 960 rows)")
def aime24(req: LoadRequest) -> list[Sample]:
    if req.variant == "opd":
        return _plain(dataset_rows(req, "aime24", "aime24/opd_aime24.json", None), "aime24/opd", extra=("source",))
    if req.variant == "dapo":
        rows = dataset_rows(req, "aime24", "dapo_math_17k/dapo_eval_aime-2024.parquet", None)
        return _dapo(rows, "aime24/dapo", "extra_info.raw_problem", unique_index=False)
    rows = dataset_rows(req, "aime24", "aime24/test.jsonl", Hub("math-ai/aime24", "test"))
    return _plain(rows, "aime24", extra=("solution", "url"))


@register_dataset("aime25", reward="math", template="cot_boxed", variants=("default",),
                  description="AIME 2025 I and II, 30 problems (thunlp/OPD copy)")
def aime25(req: LoadRequest) -> list[Sample]:
    rows = dataset_rows(req, "aime25", "aime25/test.json", Hub("math-ai/aime25", "test"))
    samples = _plain(rows, "aime25")
    if req.data_dir is not None and len(samples) == 30:  # the local file: 2025 I #1-15, then II #1-15
        for i, s in enumerate(samples):
            contest, number = ("I", i + 1) if i < 15 else ("II", i - 14)
            s.prompt_id = f"aime25/{contest}-{number}"
            s.metadata.update(contest=f"AIME 2025 {contest}", number=number)
    return samples


@register_dataset("amc23", reward="math", template="cot_boxed", variants=("qwen", "opd83"),
                  description="AMC 2023: qwen (40 problems, Qwen2.5-Math) or opd83 (83-problem DeepScaleR AMC set)")
def amc23(req: LoadRequest) -> list[Sample]:
    if req.variant == "opd83":
        return _plain(dataset_rows(req, "amc23", "amc23/opd_amc_83.json", None), "amc23/opd83", extra=("source",))
    rows = dataset_rows(req, "amc23", "amc23/test.jsonl", Hub("math-ai/amc23", "test"))
    return _plain(rows, "amc23", extra=("url",))


@register_dataset("gsm8k", reward="math", template="cot_boxed", variants=("default",),
                  description="GSM8K test, 1319 grade-school word problems")
def gsm8k(req: LoadRequest) -> list[Sample]:
    rows = dataset_rows(req, "gsm8k", "gsm8k/test.jsonl", Hub("openai/gsm8k", "test", "main"))
    out = []
    for n, row in rows.rows:
        rationale = str(rows.need(n, row, "answer"))
        solution, sep, final = rationale.rpartition("####")
        if not sep:
            raise ScirlError(f"dataset gsm8k: answer without '#### <number>' in {rows.where} {rows.unit} {n}")
        rid = get_field(row, "idx", n - 1)
        out.append(_sample(f"gsm8k/{rid}", rows.need(n, row, "question"), final.replace(",", "").strip(),
                           {"solution": solution.strip()}))
    return out


@register_dataset("dapo_math_17k", reward="math", template="cot_boxed", variants=("default",),
                  description="DAPO-Math-17k: 17,917 integer-answer problems (one row per DAPO index)")
def dapo_math_17k(req: LoadRequest) -> list[Sample]:
    rows = dataset_rows(req, "dapo_math_17k", "dapo_math_17k/dapo-math-17k.parquet",
                        Hub("BytedTsinghua-SIA/DAPO-Math-17k", "train"))
    return _dapo(rows, "dapo_math_17k", None, unique_index=True)
