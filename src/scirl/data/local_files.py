"""Local data files (.json / .jsonl / .parquet) read as rows, and turned into Samples with a field mapping.

`read_rows(path)` gives (1-based line or row number, row dict) pairs:
  .jsonl     JSON Lines (split on "\\n" only: U+0085 and U+2028 may occur inside strings; blank lines skipped)
  .json      a JSON array of rows, an object holding the rows ({"data": [...]} or {id: row, ...}), or JSON Lines
             (detected by content, not by name: SciKnowEval's sdpo_split/*.json are JSON Lines)
  .parquet   read with pyarrow
`load_local_file(path, fields, data_source)` maps every row to a Sample with `data.fields` (target -> source field,
dotted paths such as `reward_model.ground_truth` reach into nested dicts):
  prompt       required: a string, or a list of chat messages {role, content} (last user message = the problem,
               system messages kept in metadata["system"])
  answer       required unless set to null (then every sample is prompt-only, answer None)
  id           optional (default "<data_source>/<row number>")
  answer_type  optional field holding numeric | expression | mcq | subparts (default numeric; mcq with choices)
  system       optional field with a system prompt
  choices      optional: a list of option texts, a list of {text, label}, or {"text": [...], "label": [...]};
               kept in metadata["choices"] and appended to the problem as "A. text" lines
Fields not mapped fall back to the first present of DEFAULT_FIELDS[target] in the first row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scirl.data.sample import ANSWER_TYPES, Sample
from scirl.errors import ScirlError
from scirl.registry import unknown_name_error

MAPPING_KEYS = ("prompt", "answer", "id", "answer_type", "system", "choices")
DEFAULT_FIELDS = {
    "prompt": ("prompt", "problem", "question"),
    "answer": ("answer", "final_answer", "ground_truth", "reward_model.ground_truth"),
}
_MISSING = object()


# ------------------------------------------------------------------------------------------------ reading
def _read(path: Path, key: str = "data") -> tuple[list[tuple[int, dict]], str]:
    """(rows, unit): unit is "line" for JSON Lines and "row" for JSON arrays / objects and parquet."""
    path = Path(path)
    if not path.is_file():
        raise ScirlError(f"{key}: file {str(path)!r} not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise ScirlError(f"{key}: {path}: cannot read parquet ({_short(e)})") from None
        return _check_dicts([(i, r) for i, r in enumerate(table, 1)], path, "row", key), "row"
    if suffix not in (".json", ".jsonl"):
        raise ScirlError(f"{key}: {path}: unsupported file type {suffix or '(none)'!r}; use .json, .jsonl or .parquet")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ScirlError(f"{key}: {path}: not UTF-8 text ({_short(e)})") from None
    head = text.lstrip(" \t\r\n")[:1]
    if suffix == ".json" and head in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if head == "[":
                raise ScirlError(f"{key}: {path} line {e.lineno}: invalid JSON ({e.msg})") from None
            data = _MISSING  # several objects: JSON Lines
        if data is not _MISSING:
            return _check_dicts(_json_rows(data), path, "row", key), "row"
    return _jsonl_rows(text, path, key), "line"


def read_rows(path: Path, key: str = "data") -> list[tuple[int, dict]]:
    """(1-based line or row number, row dict) for every row of a .json / .jsonl / .parquet file."""
    return _read(path, key)[0]


def read_jsonl(path: Path, key: str = "data") -> list[tuple[int, dict]]:
    """(1-based line number, row dict) for every line of a JSON Lines file, whatever its name ends with."""
    path = Path(path)
    if not path.is_file():
        raise ScirlError(f"{key}: file {str(path)!r} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ScirlError(f"{key}: {path}: not UTF-8 text ({_short(e)})") from None
    return _jsonl_rows(text, path, key)


def _json_rows(data: Any) -> list[tuple[int, Any]]:
    if isinstance(data, list):
        return list(enumerate(data, 1))
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        if len(lists) == 1:  # {"data": [...]} / {"test": [...]}
            return list(enumerate(lists[0], 1))
        if data and all(isinstance(v, dict) for v in data.values()):  # {id: row, ...}
            return [(i, {"id": k, **v} if "id" not in v else v) for i, (k, v) in enumerate(data.items(), 1)]
        return [(1, data)]  # one row (also a one-line JSON Lines file)
    return [(1, data)]


def _jsonl_rows(text: str, path: Path, key: str) -> list[tuple[int, dict]]:
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.strip(" \t\r")
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScirlError(f"{key}: {path} line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
        rows.append((n, row))
    return _check_dicts(rows, path, "line", key)


def _check_dicts(rows: list[tuple[int, Any]], path: Path, unit: str, key: str) -> list[tuple[int, dict]]:
    for n, row in rows:
        if not isinstance(row, dict):
            raise ScirlError(f"{key}: {path} {unit} {n}: expected a JSON object, got {type(row).__name__}")
    return rows


def _short(e: BaseException) -> str:
    text = str(e).strip().split("\n", 1)[0]
    return (text[:200] + "...") if len(text) > 200 else text


# ------------------------------------------------------------------------------------------------ row helpers
def get_field(row: dict, name: str, default: Any = _MISSING) -> Any:
    """row[name], where a dotted name reaches into nested dicts (an exact key with a dot wins)."""
    if name in row:
        return row[name]
    cur: Any = row
    for part in name.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return default
    return cur


def answer_str(answer: Any) -> str:
    """A reference answer as text: 27.0 -> "27", 5 -> "5", lists joined by ", " (strings kept as given)."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, bool):
        return str(answer)
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer)) if abs(answer) < 1e16 else repr(answer)
    if isinstance(answer, (list, tuple)):
        return ", ".join(answer_str(a) for a in answer)
    return str(answer)


def build_messages(problem: str, system: str | None = None) -> list[dict[str, str]]:
    """[system?] + [user problem] (the prompt template rebuilds these; they are valid chat messages anyway)."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": problem}]


def parse_choices(raw: Any) -> tuple[list[str], list[str]] | None:
    """(labels, texts) from a list of texts, a list of {text, label}, or {"text": [...], "label": [...]}."""
    if isinstance(raw, dict) and "text" in raw:
        texts = [str(t) for t in raw.get("text") or []]
        labels = [str(x) for x in raw.get("label") or []] or [chr(65 + i) for i in range(len(texts))]
    elif isinstance(raw, (list, tuple)) and all(isinstance(c, dict) and "text" in c for c in raw):
        texts = [str(c["text"]) for c in raw]
        labels = [str(c.get("label") or chr(65 + i)) for i, c in enumerate(raw)]
    elif isinstance(raw, (list, tuple)) and all(isinstance(c, (str, int, float)) for c in raw):
        texts = [str(c) for c in raw]
        labels = [chr(65 + i) for i in range(len(texts))]
    else:
        return None
    return (labels, texts) if len(labels) == len(texts) <= 26 else None


def with_choices(problem: str, labels: list[str], texts: list[str]) -> str:
    """The problem followed by one "A. text" line per option."""
    return problem.rstrip() + "\n\n" + "\n".join(f"{lb}. {t}" for lb, t in zip(labels, texts))


def choices_meta(labels: list[str], texts: list[str]) -> list[str] | dict:
    """metadata["choices"]: the texts when labelled A, B, ..., else {"text": [...], "label": [...]}."""
    if labels == [chr(65 + i) for i in range(len(texts))]:
        return list(texts)
    return {"text": list(texts), "label": list(labels)}


# ------------------------------------------------------------------------------------------------ mapping
def _resolve_mapping(fields: dict, first: dict | None) -> dict[str, str | None]:
    for k in fields:
        if k not in MAPPING_KEYS:
            raise ScirlError(f"data.fields: {unknown_name_error('field mapping key', str(k), MAPPING_KEYS)}")
        if fields[k] is not None and not isinstance(fields[k], str):
            raise ScirlError(f"data.fields.{k}: expected a field name (string) or null, got {fields[k]!r}")
    if "prompt" in fields and fields["prompt"] is None:
        raise ScirlError("data.fields.prompt: the prompt field is required (cannot be null)")
    mapping = dict(fields)
    for target, candidates in DEFAULT_FIELDS.items():
        if target in mapping:
            continue
        found = next((c for c in candidates if first is not None and get_field(first, c) is not _MISSING), None)
        if found is None:
            tried = ", ".join(repr(c) for c in candidates)
            raise ScirlError(f"data.fields.{target}: the first row has none of {tried}; set data.fields.{target}"
                             + (" (or null for prompt-only rows)" if target == "answer" else ""))
        mapping[target] = found
    return mapping


def _prompt(value: Any) -> tuple[str, str | None] | None:
    """(problem, system) from a string or a list of chat messages; None when it is neither."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and "content" in m for m in value):
        users = [str(m["content"]) for m in value if m.get("role", "user") == "user"]
        systems = [str(m["content"]) for m in value if m.get("role") == "system"]
        if users:
            return users[-1], "\n\n".join(systems) or None
    return None


def load_local_file(path: Path, fields: dict | None, data_source: str, key: str = "data") -> list[Sample]:
    """The Samples of one local file, mapped with `fields` (see the module docstring)."""
    path = Path(path)
    rows, unit = _read(path, key)
    mapping = _resolve_mapping(dict(fields or {}), rows[0][1] if rows else None)
    out = []
    for n, row in rows:
        where = f"{path} {unit} {n}"

        def need(target: str) -> Any:
            value = get_field(row, mapping[target])
            if value is _MISSING or value is None:
                raise ScirlError(f"data.fields.{target}: field {mapping[target]!r} missing in {where}")
            return value

        got = _prompt(need("prompt"))
        if got is None or not got[0].strip():
            raise ScirlError(f"data.fields.prompt: field {mapping['prompt']!r} in {where} is not a non-empty string "
                             "or a list of chat messages with a user message")
        problem, system = got
        metadata: dict[str, Any] = {}
        if mapping.get("system"):
            system = str(need("system")) or system
        answer = None if mapping.get("answer") is None else answer_str(need("answer"))
        answer_type = "numeric"
        if mapping.get("choices"):
            parsed = parse_choices(need("choices"))
            if parsed is None:
                raise ScirlError(f"data.fields.choices: field {mapping['choices']!r} in {where} is not a list of "
                                 "options (texts or {text, label})")
            problem = with_choices(problem, *parsed)
            metadata["choices"] = choices_meta(*parsed)
            answer_type = "mcq"
        if mapping.get("answer_type"):
            answer_type = str(need("answer_type"))
            if answer_type not in ANSWER_TYPES:
                raise ScirlError(f"data.fields.answer_type: {answer_type!r} in {where} is not one of "
                                 f"{', '.join(ANSWER_TYPES)}")
        if system:
            metadata["system"] = system
        rid = need("id") if mapping.get("id") else n
        out.append(Sample(prompt_id=f"{data_source}/{rid}", messages=build_messages(problem, system), answer=answer,
                          answer_type=answer_type, data_source=data_source, metadata=metadata, problem=problem))
    return out
