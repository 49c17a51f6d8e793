"""The `mcq` reward: multiple-choice (single or several correct letters) and true/false items, e.g. SciKnowEval.

Gold is `sample.answer`: a letter ("B"), several letters ("AC", "A, C", "A and C": compared as a SET), or a
true/false word ("True"/"False"/"Yes"/"No", any case; normalised to "True"/"False"). Options come from
`info["choices"]`, else `sample.metadata["choices"]`: a list of option texts (labelled A, B, ...), a
SciKnowEval dict {"text": [...], "label": [...]}, or a {label: text} dict. Without options the valid labels
are A-J (plus any letter the gold uses).

The answer is read from the completion by the first of these rules that yields one:

1. `<answer>...</answer>`: the SDPO rule, i.e. the text after the LAST `<answer>` and before the next
   `</answer>` (to the end when unclosed), stripped (tags matched case-insensitively);
2. the last `\\boxed{...}`;
3. an "answer" phrase: `Answer: B`, `the answer is (B)`, `final answer: A, C`, `correct option is B`
   (the last of these whose rest-of-line parses);
4. the whole completion is a bare answer: `B`, `b.`, `(B)`, `A, C`, `AC`, `Yes`, `False`, or an option's text;
   -- the rules above set components["format_ok"] = 1 --
5. fallbacks (format_ok = 0): the last parenthesised capital label(s) `(B)` / `(A) and (C)`; an option's text
   found in the last 500 characters (longest match wins over options it contains, then the latest one);
   a leading `Yes`/`No`/`True`/`False` word.

Inside a span (the content of a marker, or the whole completion) these forms are read: one letter in any
case (`b`, `(B)`, `Option B`, `B.`), several letters joined by `,` `;` `/` `&` `+` `and` (`A, C`,
`a and c`) or written together in capitals (`AC`), a true/false word (true/false/yes/no, English only), an
option's text (matched after lower-casing, dropping `$` and collapsing spaces), and a label followed by its text
(`B. 56 pC`, `(B) 56 pC`). Wrappers like `\\boxed{}`, `\\text{}`, `$...$`, `**...**` and quotes are peeled first.
After a marker, a leading answer followed by more words (`Answer: B because ...`) is also accepted.

score = acc = 1.0 when the extracted answer equals the gold (letter sets compared as sets), else 0.0.
components: {"acc", "format_ok"}; NB SDPO's "incorrect_format" flag is inverted (it is 1 when the format is
CORRECT) -- ours is named for what it means: format_ok = 1 when an explicit answer marker or a bare answer was
found. pred: the letters sorted and joined ("B", "AC"), or "True"/"False"; None when nothing was extracted.
A gold answer that is none of the above raises ScirlError (the pool turns that into an error result).
"""

from __future__ import annotations

import re
from typing import Any

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, register_reward
from scirl.rewards.boxed_numeric import last_boxed

DEFAULT_LABELS = tuple("ABCDEFGHIJ")
_TAIL = 500  # characters of the completion searched for option texts in the free-text fallback
_MAX_SPAN = 2000  # longest span (marker content / bare completion) parsed as an answer
_MAX_MARKERS = 20  # "answer is" phrases tried, from the last one back

_TF = {"true": "True", "yes": "True", "false": "False", "no": "False"}
_SEP = r"\s*(?:,|;|/|&|\+|、|，|\band\b)\s*"
_LETTERS_ANY = re.compile(rf"[A-Za-z](?:{_SEP}[A-Za-z])*")
_LETTERS_UPPER = re.compile(rf"[A-Z](?:{_SEP}[A-Z])*(?![A-Za-z0-9])")
_CONCAT = re.compile(r"[A-Z]{2,10}")
_LABEL_THEN_TEXT = re.compile(r"[(\[]?([A-Za-z])[)\].:：](?:\s|$)")
_TF_LEAD = re.compile(r"(true|false|yes|no)(?![A-Za-z0-9])", re.IGNORECASE)
_OPTION_WORD = re.compile(r"(?:the\s+)?(?:options?|choices?)\s+", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_WRAPPERS = re.compile(r"\\(?:boxed|fbox|text|textbf|mathrm|mathbf|mbox)\s*\{(.*)\}", re.DOTALL)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_ANSWER_PHRASE = re.compile(
    r"\b(?:answers?|options?|choices?)\b[*\s]*"
    r"(?:(?:is|are|would\s+be|should\s+be|will\s+be)\b[*\s]*[:：]?|[:：=])",
    re.IGNORECASE,
)
_FREE_PARENS = re.compile(r"\(([A-Z])\)")
_SPACES = re.compile(r"\s+")


# ------------------------------------------------------------------ options and gold
def parse_choices(raw: Any) -> tuple[list[str], list[str]]:
    """(labels, texts) from a list of option texts, {"text": [...], "label": [...]} or {label: text};
    ([], []) when `raw` is None or not one of these. Labels are upper-cased."""
    if isinstance(raw, dict) and "text" in raw:
        texts = [str(t) for t in (raw.get("text") or [])]
        labels = [str(lb).strip().upper() for lb in (raw.get("label") or [])]
        if len(labels) != len(texts):
            labels = list(DEFAULT_LABELS[: len(texts)]) if len(texts) <= len(DEFAULT_LABELS) else []
            if not labels:
                return [], []
        return labels, texts
    if isinstance(raw, dict) and raw and all(isinstance(k, str) and len(k.strip()) == 1 for k in raw):
        return [k.strip().upper() for k in raw], [str(v) for v in raw.values()]
    if isinstance(raw, (list, tuple)) and 0 < len(raw) <= 26:
        return [chr(ord("A") + i) for i in range(len(raw))], [str(t) for t in raw]
    return [], []


def _norm_text(s: str) -> str:
    s = _SPACES.sub(" ", s.replace("$", "").strip().lower())
    return s.rstrip(".。 ").strip()


class _Options:
    """The valid labels and a normalised-option-text -> labels index for one item."""

    def __init__(self, labels: list[str], texts: list[str]):
        self.labels = frozenset(labels) if labels else frozenset(DEFAULT_LABELS)
        self.by_text: dict[str, set[str]] = {}
        for lb, t in zip(labels, texts):
            n = _norm_text(t)
            if n:
                self.by_text.setdefault(n, set()).add(lb)

    def text_label(self, s: str) -> frozenset[str] | None:
        """The label whose option text is exactly `s` (normalised); None when none or several (duplicates)."""
        hit = self.by_text.get(_norm_text(s))
        return frozenset(hit) if hit is not None and len(hit) == 1 else None


def parse_gold(answer: Any, opts: _Options) -> frozenset[str] | str:
    """The gold as a letter set or "True"/"False"; ScirlError when it is neither (nor an option's text)."""
    s = str(answer).strip() if answer is not None else ""
    if s:
        letters = _parse_letters(_clean(s), frozenset(chr(c) for c in range(ord("A"), ord("Z") + 1)), True)
        if letters:
            return letters
        by_text = opts.text_label(s)
        if by_text:
            return by_text
        tf = _TF.get(_clean(s).lower())
        if tf:
            return tf
    raise ScirlError(f"mcq: reference answer {answer!r} is not a letter, letters, True/False or an option text")


# ------------------------------------------------------------------ span parsing
def _clean(span: str) -> str:
    """Peel wrappers (\\boxed{}, \\text{}, $..$, **..**, quotes, brackets), 'Option'/'Choice', end punctuation."""
    s = span.strip()
    for _ in range(6):
        before = s
        m = _WRAPPERS.fullmatch(s)
        if m:
            s = m.group(1).strip()
        for a, b in (("$$", "$$"), ("$", "$"), ("**", "**"), ("*", "*"), ("`", "`"), ('"', '"'), ("'", "'"),
                     ("“", "”"), ("[", "]"), ("{", "}")):
            if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a): len(s) - len(b)].strip()
        s = s.strip("*").strip()
        s = s.rstrip(".。!！").strip()
        m = _OPTION_WORD.match(s)
        if m:
            s = s[m.end():]
        if s == before:
            break
    return s


def _parse_letters(s: str, valid: frozenset[str], allow_lower: bool) -> frozenset[str] | None:
    """A set of labels when ALL of `s` is label(s): `B`, `(b)`, `A, C`, `a and c`, `(A) and (C)`, `AC`."""
    s = _PAREN_LETTER.sub(r"\1", s)
    if len(s) > 200:
        return None
    m = (_LETTERS_ANY if allow_lower else _LETTERS_UPPER).fullmatch(s)
    if m:
        letters = frozenset(re.findall(r"[A-Za-z]", re.sub(r"\band\b", ",", s)))
        letters = frozenset(c.upper() for c in letters)
    elif _CONCAT.fullmatch(s) and s.lower() not in _TF:
        letters = frozenset(s)
    else:
        return None
    return letters if letters and letters <= valid else None


def _parse_span(span: str, opts: _Options, leading: bool) -> frozenset[str] | str | None:
    """An answer when the whole span is one; with `leading`, also an answer that merely starts the span."""
    if len(span) > _MAX_SPAN:
        span = span[:_MAX_SPAN] if leading else ""
    s = _clean(span)
    if not s:
        return None
    letters = _parse_letters(s, opts.labels, allow_lower=True)
    if letters:
        return letters
    by_text = opts.text_label(s)
    if by_text:
        return by_text
    tf = _TF.get(s.lower())
    if tf:
        return tf
    m = _LABEL_THEN_TEXT.match(s)  # "B. 56 pC", "(b) 56 pC", "B: ..."
    if m and m.group(1).upper() in opts.labels:
        label, rest = m.group(1).upper(), s[m.end():]
        if leading and (m.group(1).isupper() or s[0] in "(["):
            return frozenset(label)
        # a whole completion "B. <text>" counts only when <text> is B's option text (or short, without options)
        if not leading and (opts.text_label(rest) == frozenset(label)
                            or (not opts.by_text and len(rest) <= 100 and "\n" not in rest)):
            return frozenset(label)
    if not leading:
        return None
    m = _LETTERS_UPPER.match(s)  # "B because ...", "A, C since ..."
    if m:
        letters = _parse_letters(m.group(0), opts.labels, allow_lower=False)
        if letters:
            return letters
    m = _TF_LEAD.match(s)
    if m:
        return _TF[m.group(1).lower()]
    low = _norm_text(s)
    best = None
    for text, labels in opts.by_text.items():  # an option's text followed by more words
        if len(labels) == 1 and low.startswith(text) and (len(low) == len(text) or not low[len(text)].isalnum()):
            if best is None or len(text) > len(best[0]):
                best = (text, labels)
    return frozenset(best[1]) if best else None


# ------------------------------------------------------------------ extraction
def _from_answer_tag(completion: str, opts: _Options) -> frozenset[str] | str | None:
    opens = [m.end() for m in _ANSWER_OPEN.finditer(completion)]
    if not opens:
        return None
    rest = completion[opens[-1]:]
    close = _ANSWER_CLOSE.search(rest)
    return _parse_span(rest[: close.start()] if close else rest, opts, leading=True)


def _from_boxed(completion: str, opts: _Options) -> frozenset[str] | str | None:
    boxed = last_boxed(completion)
    return None if boxed is None else _parse_span(boxed, opts, leading=True)


def _from_answer_phrase(completion: str, opts: _Options) -> frozenset[str] | str | None:
    ends = [m.end() for m in _ANSWER_PHRASE.finditer(completion)]
    for end in reversed(ends[-_MAX_MARKERS:]):
        line = completion[end: end + 300].split("\n", 1)[0]
        got = _parse_span(line, opts, leading=True)
        if got is not None:
            return got
    return None


def _from_parens(completion: str, opts: _Options) -> frozenset[str] | None:
    hits = [m for m in _FREE_PARENS.finditer(completion) if m.group(1) in opts.labels]
    if not hits:
        return None
    letters = {hits[-1].group(1)}
    for prev, nxt in zip(reversed(hits[:-1]), reversed(hits[1:])):  # "(A) and (C)": extend back over separators
        if re.fullmatch(_SEP, completion[prev.end(): nxt.start()]):
            letters.add(prev.group(1))
        else:
            break
    return frozenset(letters)


def _from_option_text(completion: str, opts: _Options) -> frozenset[str] | None:
    tail = _norm_text(completion[-_TAIL:])
    found: list[tuple[str, int, set[str]]] = []
    for text, labels in opts.by_text.items():
        if len(labels) != 1 or len(text) > len(tail):
            continue
        last = None
        for m in re.finditer(rf"(?<![a-z0-9]){re.escape(text)}(?![a-z0-9])", tail):
            last = m.end()
        if last is not None:
            found.append((text, last, labels))
    found = [f for f in found if not any(f[0] != g[0] and f[0] in g[0] for g in found)]
    if not found:
        return None
    return frozenset(max(found, key=lambda f: f[1])[2])


def extract_mcq(completion: str, opts: _Options) -> tuple[frozenset[str] | str | None, bool]:
    """(answer, format_ok): the answer the completion commits to (letter set or "True"/"False") or None."""
    for rule in (_from_answer_tag, _from_boxed, _from_answer_phrase):
        got = rule(completion, opts)
        if got is not None:
            return got, True
    got = _parse_span(completion, opts, leading=False)
    if got is not None:
        return got, True
    got = _from_parens(completion, opts) or _from_option_text(completion, opts)
    if got is not None:
        return got, False
    m = _TF_LEAD.match(_clean(completion[:_MAX_SPAN]))
    if m:
        return _TF[m.group(1).lower()], False
    return None, False


def format_pred(pred: frozenset[str] | str | None) -> str | None:
    if pred is None or isinstance(pred, str):
        return pred
    return "".join(sorted(pred))


@register_reward("mcq")
def mcq(sample: Sample, completion: str, info: dict) -> RewardResult:
    """score = acc = 1.0 when the extracted choice (set) equals the gold, else 0.0; see the module docstring."""
    raw = (info or {}).get("choices")
    if raw is None:
        raw = (sample.metadata or {}).get("choices")
    labels, texts = parse_choices(raw)
    opts = _Options(labels, texts)
    gold = parse_gold(sample.answer, opts)
    if not labels and isinstance(gold, frozenset):
        opts.labels = opts.labels | gold
    pred, format_ok = extract_mcq(completion if isinstance(completion, str) else str(completion), opts)
    score = 1.0 if pred is not None and pred == gold else 0.0
    return RewardResult(score, {"acc": score, "format_ok": 1.0 if format_ok else 0.0}, format_pred(pred))
