"""Physics datasets: sciknoweval_physics (mcq), phybench (eed), olympiadbench_physics (math with tolerances).

SciKnowEval v1/v2 rows: problem = question + "A. text" option lines, answer = answerKey, metadata choices /
instruction (prompt.default) / level / task / subtask / source. The 331 true_or_false rows of
physics_laboratory_safety_test carry answer "Yes"/"No" and no options: they become two-option MCQs
(A. Yes / B. No, answer the letter; the mcq reward also accepts "Yes"/"No" as the option text).
SDPO's split rows (JSON Lines named .json): problem = the row's prompt (question + "A: text" options, as SDPO
shows it), metadata["system"] = the row's <reasoning>/<answer> instruction, answer = the letter.
"""

from __future__ import annotations

import ast
import re

from scirl.data.datasets import LoadRequest, register_dataset
from scirl.data.local_files import build_messages, choices_meta, get_field, parse_choices, with_choices
from scirl.data.sample import Sample
from scirl.data.sources import Hub, Rows, dataset_rows, strip_dollars
from scirl.errors import ScirlError

SKE = "sciknoweval_physics"
SKE_V2 = ("general_physics_calculation", "physics_literature_QA", "physics_detailed_understanding",
          "physics_safety_QA", "physics_laboratory_safety_test")
SKE_V1 = "high_school_physics_calculation"
SKE_HUB = "hicai-zju/SciKnowEval"
_SDPO_OPTION = re.compile(r"^([A-J]): (.*)$", re.M)
_TF_LETTER = {"yes": "A", "true": "A", "no": "B", "false": "B"}


def _ske_v2_sample(rows: Rows, n: int, row: dict, stem: str) -> Sample:
    question = str(rows.need(n, row, "question"))
    if str(get_field(row, "type", "")) == "true_or_false":
        gold = str(rows.need(n, row, "answer")).strip().lower()
        if gold not in _TF_LETTER:
            raise ScirlError(f"dataset {rows.dataset}: true/false answer {gold!r} in {rows.where} {rows.unit} {n}")
        labels, texts, answer = ["A", "B"], ["Yes", "No"], _TF_LETTER[gold]
    else:
        parsed = parse_choices(rows.need(n, row, "choices"))
        if not parsed or not parsed[1]:
            raise ScirlError(f"dataset {rows.dataset}: no options in {rows.where} {rows.unit} {n}")
        (labels, texts), answer = parsed, str(rows.need(n, row, "answerKey")).strip()
    problem = with_choices(question, labels, texts)
    details = get_field(row, "details", {}) or {}
    meta = {"choices": choices_meta(labels, texts), "instruction": get_field(row, "prompt.default", None),
            "type": get_field(row, "type", None), **{k: details.get(k) for k in ("level", "task", "subtask", "source")}}
    return Sample(prompt_id=f"{SKE}/{stem}/{n}", messages=build_messages(problem), answer=answer, answer_type="mcq",
                  metadata={k: v for k, v in meta.items() if v not in (None, "")}, problem=problem)


def _ske_sdpo_sample(rows: Rows, n: int, row: dict) -> Sample:
    problem, system = str(rows.need(n, row, "prompt")), get_field(row, "system", None)
    options = _SDPO_OPTION.findall(problem)
    meta = {"system": system, "idx": get_field(row, "idx", None), "elo": get_field(row, "elo", None),
            "source": "lasgroup/SDPO"}
    if options and [lb for lb, _ in options] == [chr(65 + i) for i in range(len(options))]:
        meta["choices"] = [t.strip() for _, t in options]
    rid = get_field(row, "idx", n)
    return Sample(prompt_id=f"{SKE}/sdpo/{rid}", messages=build_messages(problem, system),
                  answer=str(rows.need(n, row, "answer")).strip(), answer_type="mcq",
                  metadata={k: v for k, v in meta.items() if v not in (None, "")}, problem=problem)


@register_dataset(SKE, reward="mcq", template="answer_tag",
                  variants=("v2", "sdpo_train", "sdpo_test", "v1") + SKE_V2,
                  description="SciKnowEval physics MCQs: v2 (5 tasks, 3,647), sdpo_train/test (720/80 of "
                              "general_physics_calculation, SDPO format), v1 (698 high-school calculations), "
                              "or one v2 task")
def sciknoweval_physics(req: LoadRequest) -> list[Sample]:
    if req.variant in ("sdpo_train", "sdpo_test"):
        split = req.variant.split("_")[1]
        rows = dataset_rows(req, SKE, f"{SKE}/sdpo_split/{split}.json", None)
        return [_ske_sdpo_sample(rows, n, row) for n, row in rows.rows]
    if req.variant == "v1":
        rows = dataset_rows(req, SKE, f"{SKE}/v1/{SKE_V1}.jsonl", None)
        return [_ske_v2_sample(rows, n, row, SKE_V1) for n, row in rows.rows]
    stems = SKE_V2 if req.variant in (None, "v2") else (req.variant,)
    out: list[Sample] = []
    if req.data_dir is None:  # the hub has every domain and task in one split: keep the physics tasks asked for
        rows = dataset_rows(req, SKE, f"{SKE}/v2/{stems[0]}.jsonl", Hub(SKE_HUB, "test"))
        for n, row in rows.rows:
            task = get_field(row, "details.task", None)
            if get_field(row, "domain", None) == "Physics" and task in stems:
                out.append(_ske_v2_sample(rows, n, row, task))
        return out
    for stem in stems:
        rows = dataset_rows(req, SKE, f"{SKE}/v2/{stem}.jsonl", None)
        out.extend(_ske_v2_sample(rows, n, row, stem) for n, row in rows.rows)
    return out


# ------------------------------------------------------------------------------------------------ PHYBench
PHYBENCH_FILES = {"answered": "PHYBench-fullques_v1.json", "all": "PHYBench-questions_v1.json",
                  "unanswered": "PHYBench-onlyques_v1.json"}


def unwrap_latex_answer(s: str) -> str:
    """A reference answer without its display wrapper: `\\[ x \\]`, `$$ x $$`, `$x$`, a whole `\\boxed{x}`."""
    for _ in range(3):
        before = s
        s = strip_dollars(s)
        if s.startswith("\\boxed{") and s.endswith("}") and _closes_at_end(s, len("\\boxed")):
            s = s[len("\\boxed{"): -1].strip()
        if s == before:
            break
    return s


def _closes_at_end(s: str, brace: int) -> bool:
    depth = 0
    for i in range(brace, len(s)):
        depth += {"{": 1, "}": -1}.get(s[i], 0) if (i == 0 or s[i - 1] != "\\") else 0
        if depth == 0:
            return i == len(s) - 1
    return False


@register_dataset("phybench", reward="eed", template="cot_boxed", correct_threshold=1.0,
                  variants=("answered", "all", "unanswered"),
                  description="PHYBench: answered (100 with LaTeX answers, EED-graded), all (499), "
                              "unanswered (399 prompt-only; id 778 has no question text and is skipped)")
def phybench(req: LoadRequest) -> list[Sample]:
    fname = PHYBENCH_FILES[req.variant or "answered"]
    rows = dataset_rows(req, "phybench", f"phybench/{fname}",
                        Hub("Eureka-Lab/PHYBench", "train", kwargs={"data_files": fname}))
    out = []
    for n, row in rows.rows:
        problem = str(rows.need(n, row, "content"))
        if not problem.strip():
            continue  # id 778 (onlyques / questions) has no question text: nothing to ask
        raw = str(get_field(row, "answer", "") or "")
        answer = unwrap_latex_answer(raw) or None
        meta = {"tag": get_field(row, "tag", None), "solution": get_field(row, "solution", None) or None,
                "source_answer": raw if answer is not None and raw.strip() != answer else None}
        out.append(Sample(prompt_id=f"phybench/{rows.need(n, row, 'id')}", messages=build_messages(problem),
                          answer=answer, answer_type="expression", problem=problem,
                          metadata={k: v for k, v in meta.items() if v not in (None, "")}))
    return out


# ------------------------------------------------------------------------------------------------ OlympiadBench
# a question shows a figure when it embeds a markdown image (`![](https://cdn.mathpix.com/...)`): 93 of 793
FIGURE = re.compile(r"!\[[^\]]*\]\([^)]*\)")


_SEGMENTS = re.compile(r"\s*\$[^$]+\$(?:\s*(?:,|;|and)\s*\$[^$]+\$)+\s*")


def _final_answers(raw, multiple: bool = False) -> list[str]:
    """OlympiadBench final_answer (a list, or a string that looks like one) as stripped answer strings. With
    is_multiple_answer, one string made of several `$..$` pieces ("$x=1$ , $y=2$") is split into them."""
    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = ast.literal_eval(text) if text.startswith("[") else [text]
        except (ValueError, SyntaxError):
            raw = [text]
    if not isinstance(raw, (list, tuple)):
        raw = [raw]
    raw = [str(a) for a in raw if str(a).strip()]
    if multiple and len(raw) == 1 and _SEGMENTS.fullmatch(raw[0]):
        raw = re.findall(r"\$[^$]+\$", raw[0])
    return [strip_dollars(a) for a in raw]


def _precision(error) -> float | list[float | None] | None:
    """OlympiadBench `error` ("1e-1", "1e-2,1e-3", ",1e5"): the math reward's ABSOLUTE tolerance (one per
    comma-separated answer when several; an empty entry means the default comparison)."""
    if error is None or str(error).strip() == "":
        return None
    parts = [p.strip() for p in str(error).split(",")]
    values = [float(p) if p else None for p in parts]
    return values[0] if len(values) == 1 else values


@register_dataset("olympiadbench_physics", reward="math", template="cot_boxed",
                  variants=("auto_scorable", "no_figures", "all"),
                  description="OlympiadBench English physics: auto_scorable (666), no_figures (auto-scorable "
                              "without a figure), all (793; non-auto-scorable rows unanswered)")
def olympiadbench_physics(req: LoadRequest) -> list[Sample]:
    rows = dataset_rows(req, "olympiadbench_physics", "olympiadbench_physics/English_Olympiad_Physics.json",
                        Hub("Hothan/OlympiadBench", "train", "OE_TO_physics_en_COMP"))
    out = []
    for n, row in rows.rows:
        question = str(rows.need(n, row, "question"))
        auto = bool(get_field(row, "support_auto_scoring", True))
        figure = bool(FIGURE.search(question))
        if req.variant != "all" and (not auto or (req.variant == "no_figures" and figure)):
            continue
        multiple = bool(get_field(row, "is_multiple_answer", False))
        answers = _final_answers(rows.need(n, row, "final_answer"), multiple)
        ob_type = str(get_field(row, "answer_type", "") or "")
        solution = get_field(row, "solution", None)
        meta = {"subfield": get_field(row, "subfield", None), "unit": get_field(row, "unit", None),
                "needs_figure": figure, "source": get_field(row, "source", None),
                "solution": "\n\n".join(solution) if isinstance(solution, list) else solution,
                "ob_answer_type": ob_type or None, "error": get_field(row, "error", None),
                "is_multiple_answer": multiple, "label": get_field(row, "label", None), "final_answer": answers}
        answer, answer_type, reward_info = None, "numeric" if ob_type == "Numerical" else "expression", {}
        if auto and answers:
            answer = ", ".join(answers)
            if len(answers) > 1:
                answer_type, meta["subparts"] = "subparts", [{"answer": a} for a in answers]
            precision = _precision(meta["error"])
            if precision is not None:
                reward_info["precision"] = precision
        out.append(Sample(prompt_id=f"olympiadbench_physics/{rows.need(n, row, 'id')}",
                          messages=build_messages(question), answer=answer, answer_type=answer_type,
                          metadata={k: v for k, v in meta.items() if v not in (None, "")}, problem=question,
                          reward_info=reward_info))
    return out
