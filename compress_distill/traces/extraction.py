"""Answer extraction and verification (paper §3.1; issue 3, item 2).

A response is split at ``</think>``; only the text *after* a closed think block
is searched for the answer. A block that never closed counts as truncated and
incorrect. Extraction is a type-specific cascade of anchored stages, each taking
its LAST parseable match:

1. ``\\boxed{...}`` (nested braces), 2. ``#### ...``,
3. "the answer is ..." / "final answer: ..." / "answer: ...",
4. a type fallback over the whole answer text (last number, last standalone
   option letter, last yes/no, last math group).

Answer types: ``numeric`` (exact rational equality; ``1,000`` = ``1000``,
``0.5`` = ``1/2``, currency and trailing units dropped, ``12%`` reads as 12),
``letter`` (A-J, or the first ``choices`` letters), ``boolean`` (yes/true ->
"yes", no/false -> "no"), ``latex`` (light normalisation, then numeric equality,
then Math-Verify when installed and running in a main thread, else a small
built-in evaluator for arithmetic, ``\\frac``, ``\\sqrt`` and ``\\pi``).

Math-Verify's timeouts use ``signal.alarm``, which only works in a process's main
thread: bulk callers use :func:`verify_batch`, which runs records in a process pool.
Pure module: no I/O, never raises on garbage *text* (unknown answer types do raise).

Work per record is bounded, because responses come from models and users, not from us:
a response (or gold) over ``MAX_RESPONSE_CHARS`` is not read at all and gets an
``unverifiable`` verdict, as does a record that trips an unexpected error; anchored spans
are read from their first ``MAX_SPAN_CHARS``; a literal with more than ``MAX_DIGITS``
digits is never converted to a number (it still is a candidate, and only equals the
same text); LaTeX over ``MAX_LATEX_CHARS`` compares as a normalised string only; the
built-in evaluator refuses nesting deeper than ``MAX_NESTING``. Regexes that face the
whole text use possessive whitespace runs so no input makes them backtrack
polynomially.
"""

from __future__ import annotations

import math
import multiprocessing
import re
import string
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

ANSWER_TYPES = ("numeric", "letter", "boolean", "latex")
DEFAULT_LETTERS = "ABCDEFGHIJ"
MAX_CANDIDATES = 64  # per stage, from the end: bounds work on degenerate, repetitive output
MATH_VERIFY_TIMEOUT_S = 3
# ~250k tokens: far above any teacher's max_tokens (the paper's is 14,336, ~60k characters),
# and small enough that every stage below stays well under a second on the worst text.
MAX_RESPONSE_CHARS = 1_000_000
# An anchored answer (a box, "####", "the answer is") is read from its first 2,000
# characters: real ones are far shorter, and 64 nested boxes then cost 64 x 2,000, not 64 x n.
MAX_SPAN_CHARS = 2_000
# Digits in one literal: int/Fraction conversion is superlinear (and Python refuses > 4,300
# digits outright), so longer literals are kept as text and only equal the same text.
MAX_DIGITS = 400
MAX_LATEX_CHARS = 1_000  # longer LaTeX: normalised-string equality only (no evaluator, no Math-Verify)
MAX_NESTING = 100  # evaluator recursion (brackets, \frac, powers): far below Python's stack limit
UNVERIFIABLE = "unverifiable"  # Verdict.reason of a record that could not be judged (see Verdict.error)


@dataclass(frozen=True)
class ThinkSplit:
    reasoning: str
    answer_text: str
    has_close: bool
    truncated: bool


@dataclass(frozen=True)
class Verdict:
    extracted: str | None
    correct: bool
    truncated: bool
    reason: str  # "match" | "mismatch" | "no_answer" | "truncated" | "unverifiable"
    error: str | None = None  # why an "unverifiable" record could not be judged


def unverifiable(error: str) -> Verdict:
    """The verdict of a record that could not be judged: scored incorrect, with the cause."""
    return Verdict(None, False, False, UNVERIFIABLE, error)


def check_answer_type(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer_type {answer_type!r} (expected one of {', '.join(ANSWER_TYPES)})")


# --------------------------------------------------------------------------- think block

_OPEN = re.compile(r"<think\s*>", re.I)
_CLOSE = re.compile(r"</think\s*>", re.I)


def split_think(response: str, *, expect_think: bool = False) -> ThinkSplit:
    """Split a response into reasoning and the answer text after ``</think>``.

    ``</think>`` without ``<think>`` is fine (the chat template opened the block in
    the prompt). Without any tag the response is a plain answer, unless
    ``expect_think`` says the template always opens a block: then it is truncated.
    """
    if not isinstance(response, str):
        response = "" if response is None else str(response)
    closes = list(_CLOSE.finditer(response))
    opened = _OPEN.search(response)
    if closes:
        last = closes[-1]  # the answer is what follows the final close tag
        start = opened.end() if opened and opened.start() < last.start() else 0
        return ThinkSplit(response[start : last.start()].strip(), response[last.end() :].strip(), True, False)
    if opened:
        return ThinkSplit(response[opened.end() :].strip(), "", False, True)
    if expect_think:
        return ThinkSplit(response.strip(), "", False, True)
    return ThinkSplit("", response.strip(), False, False)


# --------------------------------------------------------------------------- numbers

# Whitespace runs are possessive (\s*+): none of the tokens after them can start with a
# space, so the matches are the same, but a failed match no longer retries every way of
# splitting a long run between neighbouring \s* (cubic on "-" + 500 spaces + "x").
_FRAC = (
    r"\\[dt]?frac\s*+(?:\{\s*+(?P<fn>-?\d+(?:\.\d+)?)\s*+\}|(?P<fn1>\d))"
    r"\s*+(?:\{\s*+(?P<fd>-?\d+(?:\.\d+)?)\s*+\}|(?P<fd1>\d))"
)
# Commas only as proper thousands groups, so "1,5" is two numbers, not 15.
_DEC = (
    r"(?P<dec>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<exp>[-+]?\d{1,4})(?!\d)"
    r"|\s*+(?:\\times|\\cdot|×)\s*+10\s*+\^\s*+\{?\s*+(?P<exp2>[-+]?\d{1,4})\s*+\}?)?"
    r"(?:\s*+/\s*+(?P<den>\d+(?:\.\d+)?)(?!\.?\d))?"
)
# Not glued to a word ("B12", "x2"), a decimal point or a command; "3-5" is 3 and 5.
_NUM_SEARCH = re.compile(rf"(?<![\w.\\/])(?P<neg>-(?=[\d.\\]))?(?:{_FRAC}|{_DEC})")
_NUM_ANCHOR = re.compile(
    rf"\s*+(?P<neg>-)?\s*+(?:[$€£¥₹]|usd\b|rs\.?)?\s*+(?P<neg2>-)?\s*+(?:{_FRAC}|{_DEC})", re.I
)
_ASSIGN = re.compile(r"^\s*[A-Za-z_]\w*\s*=\s*")  # "x = 5"
_MIXED = re.compile(r"\s*+(?P<neg>-)?\s*+(\d+)\s++(\d+)\s*+/\s*+(\d+)")
_UNIT_POWER = re.compile(r"\^\s*+\{?\s*+-?\d+\s*+\}?")  # "m^2" is a unit, not a second number
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_THIN_SPACE_GROUP = re.compile(r"(?<=\d)\\[,!;:]\s*(?=\d{3}(?!\d))")
_NOISE = re.compile(r"\\left|\\right|\\displaystyle|\\[!,;: ]|\\%|\*\*|__|`|~")


def _huge(*literals: str | None) -> bool:
    """Whether a literal is too long to convert (see MAX_DIGITS)."""
    return any(lit is not None and len(lit) > MAX_DIGITS for lit in literals)


def _is_huge_match(m: re.Match[str]) -> bool:
    return _huge(m["fn"], m["fd"], m["dec"], m["den"])


def _is_candidate(m: re.Match[str]) -> bool:
    """A number to extract: anything but a zero denominator. One too long to evaluate counts
    (so a huge final answer is not skipped for an earlier small number); no Fraction is built,
    so scanning every number of a long text stays cheap."""
    den = m["fd"] or m["fd1"] or m["den"]
    return den is None or den.strip("-.0") != ""


def _match_value(m: re.Match[str]) -> Fraction | None:
    if _is_huge_match(m):  # absurd literals: refuse rather than burn CPU (or hit the int-str limit)
        return None
    if m["fn"] or m["fn1"]:
        num, den = Fraction(m["fn"] or m["fn1"]), Fraction(m["fd"] or m["fd1"])
        if den == 0:
            return None
        value = num / den
    else:
        value = Fraction(m["dec"].replace(",", ""))
        exp = m["exp"] or m["exp2"]
        if exp:
            value *= Fraction(10) ** int(exp)
        if m["den"]:
            den = Fraction(m["den"])
            if den == 0:
                return None
            value /= den
    negative = bool(m["neg"]) != bool(m.groupdict().get("neg2"))
    return -value if negative else value


def _clean(text: str) -> str:
    text = text.replace("−", "-").replace("{,}", ",").replace("\\$", "$").replace("°", "")
    text = _THIN_SPACE_GROUP.sub(",", text)  # 1\,000 is LaTeX for 1,000
    for _ in range(3):  # \text{...} may nest inside \textbf{...}
        text = _TEXT_CMD.sub(r" \1 ", text)
    text = text.replace("^\\circ", "").replace("^{\\circ}", "")
    return _NOISE.sub(" ", text)


def _parse_number(text: str) -> tuple[str, Fraction | None] | None:
    """Anchored parse: a whole string that is one number plus optional units/percent.

    The value is None for a number too long to evaluate (see MAX_DIGITS): it is still
    one number, so a span holding it is not searched for a smaller one inside it.
    """
    s = _ASSIGN.sub("", _clean(text).replace("$", " ")).strip()
    mixed = _MIXED.match(s)
    if mixed and not re.search(r"\d", _UNIT_POWER.sub("", s[mixed.end() :])):
        if _huge(*mixed.groups()[1:]):
            return mixed.group(0).strip(), None
        whole, num, den = (int(g) for g in mixed.groups()[1:])
        if den == 0:
            return None
        mixed_value = whole + Fraction(num, den)
        return mixed.group(0).strip(), -mixed_value if mixed["neg"] else mixed_value
    m = _NUM_ANCHOR.match(s)
    if not m or re.search(r"\d", _UNIT_POWER.sub("", s[m.end() :])):
        return None
    if _is_huge_match(m):
        return m.group(0).strip(), None
    value = _match_value(m)
    return None if value is None else (m.group(0).strip(), value)


def normalize_numeric(s: str | int | float | Fraction | None) -> Fraction | None:
    """Exact value of a numeric answer, or None if it is not one number.

    Handles thousands commas, decimals, ``a/b``, ``\\frac``/``\\dfrac``, negatives,
    scientific notation (``1.5e3``, ``1.5 \\times 10^{3}``), mixed numbers
    (``1 1/2``), currency signs and trailing units or ``%`` (dropped: ``12%`` -> 12,
    because datasets give percent answers as the bare number). A literal with more than
    ``MAX_DIGITS`` digits has no value here (None): answers_match then compares its text.
    """
    if s is None or isinstance(s, bool):
        return None
    if isinstance(s, Fraction):
        return s
    if isinstance(s, int):
        return Fraction(s)
    if isinstance(s, float):
        return Fraction(repr(s)) if math.isfinite(s) else None  # repr: 0.1 -> 1/10, not binary noise
    if not isinstance(s, str) or len(s) > 1000:
        return None
    parsed = _parse_number(s)
    return None if parsed is None else parsed[1]


def _first_number(text: str) -> re.Match[str] | None:
    return next((m for m in _NUM_SEARCH.finditer(text) if _is_candidate(m)), None)


def _numeric_from_span(span: str, boxed: bool) -> str | None:
    s = _clean(span).replace("$", " ").strip()
    if boxed and "=" in s:  # \boxed{2x = 10} -> 10
        s = s.rsplit("=", 1)[1]
    s = _ASSIGN.sub("", s)
    parsed = _parse_number(s)
    if parsed:
        return parsed[0]
    first = _first_number(s)
    if first and not s[: first.start()].strip():  # "42. Check: 6*7=42" -> 42
        return first.group(0).strip()
    if "=" in s:  # "the total is 5 + 3 = 8" -> 8
        after = _first_number(s.rsplit("=", 1)[1])
        first = after or first
    return first.group(0).strip() if first else None


def _numeric_fallback(text: str) -> str | None:
    last = None
    for m in _NUM_SEARCH.finditer(_clean(text)):  # forward, keeping one match: no list of them all
        if _is_candidate(m):
            last = m
    return last.group(0).strip() if last else None


# --------------------------------------------------------------------------- letters

# Words that may follow a real option letter: "A because ...", "A is correct".
_AFTER_LETTER_OK = {"because", "since", "as", "which", "is", "was", "and", "or", "for", "given", "so", "but"}


def _letters(choices: int | None) -> str:
    if isinstance(choices, int) and 1 <= choices <= 26:
        return string.ascii_uppercase[:choices]
    return DEFAULT_LETTERS


def _strip_markup(text: str) -> str:
    return _clean(text).replace("$", " ").replace("*", " ").replace("_", " ")


def _letter_from_span(span: str, letters: str) -> str | None:
    """Letter right after an anchor: "(B)", "B) Paris", "Option C", "d." ..."""
    s = _strip_markup(span).strip()
    first = re.match(r"[\s(\[{\"']*(?:(?:option|choice)\s*+[:#]?\s*+)?\(?([A-Za-z])(?![\w'-])(.*)", s, re.I | re.S)
    if first:
        letter, rest = first.group(1), first.group(2)
        follows = re.match(r"\s+([A-Za-z0-9]\w*)", rest)
        # "A patient", "I think", "a bit": an English word, not an option letter.
        word_follows = follows is not None and follows.group(1).lower() not in _AFTER_LETTER_OK
        is_word = letter in "AI" or letter.islower()
        if letter.upper() in letters and not (is_word and word_follows):
            return letter.upper()
    for m in re.finditer(r"[(\[]([A-Za-z])[)\]]|\b(?:option|choice)\s*+[:#]?\s*+([A-Za-z])\b", s, re.I):
        letter = (m.group(1) or m.group(2)).upper()
        if letter in letters:
            return letter
    for m in re.finditer(r"(?<![\w'-])([A-Z])(?=[ \t]*+(?:$|[.,;:!?)]))", s, re.M):
        if m.group(1) in letters:
            return m.group(1)
    return None


# Possessive runs (*+, ++) as in the number regexes: these scan the whole answer text.
_LETTER_PATTERNS = (
    re.compile(r"\b(?:option|choice)\s*+[:#]?\s*+\(?([A-Za-z])\b", re.I),  # "Option B", "choice (c)"
    re.compile(r"[(\[]([A-Za-z])[)\]]"),  # "(B)", "[c]"
    re.compile(r"(?<=[ \t])([A-Z])\)"),  # "so B) is right" (line-start "B)" handled below)
    re.compile(r"^[ \t*#>\-]*+\(?([A-Z])[ \t*.):]*+$", re.M),  # a line that is just the letter
    re.compile(r"(?<![\w'\-(\[])([A-Z])(?=[ \t]*+(?:[.,;:!?]|$))", re.M),  # "... clearly B."
    re.compile(r"\b([A-Z])\s++is\s++(?:the\s++)?(?:correct|right|best|true)\b"),
)
_OPTION_LINE = re.compile(r"^[ \t*#>\-]*[(\[]?([A-Z])[).:\]][ \t]+\S", re.M)


def _letter_fallback(text: str, letters: str) -> str | None:
    s = _strip_markup(text)
    found: list[tuple[int, str]] = []
    for pattern in _LETTER_PATTERNS:
        found += [(m.start(1), m.group(1).upper()) for m in pattern.finditer(s)]
    option_lines = [(m.start(1), m.group(1)) for m in _OPTION_LINE.finditer(s)]
    if len(option_lines) == 1:  # one "B) Paris" line is an answer ...
        found += option_lines
    else:  # ... several are the options listed again, not a choice
        found = [item for item in found if item not in option_lines]
    valid = [item for item in found if item[1] in letters]
    return max(valid)[1] if valid else None


# --------------------------------------------------------------------------- booleans and LaTeX

_BOOL = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_BOOL_WORD = re.compile(r"\b(yes|no|true|false)\b", re.I)


def normalize_boolean(text: str) -> str | None:
    """"yes"/"no" for yes/no/true/false (any case, markup stripped), else None."""
    word = re.sub(r"[^a-z]", "", _strip_markup(str(text)).lower())
    return _BOOL.get(word)


def _bool_from_span(span: str) -> str | None:
    m = _BOOL_WORD.search(_strip_markup(span))
    return _BOOL[m.group(1).lower()] if m else None


def _bool_fallback(text: str) -> str | None:
    s = _strip_markup(text)
    whole = normalize_boolean(s)
    if whole:
        return whole
    # A line that opens with the verdict ("Yes, because...") beats a later "no doubt".
    starts = list(re.finditer(r"^[^\w\n]*(yes|no|true|false)\b", s, re.I | re.M))
    if starts:
        return _BOOL[starts[-1].group(1).lower()]
    words = list(_BOOL_WORD.finditer(s))
    return _BOOL[words[-1].group(1).lower()] if words else None


_MATH_DELIM = re.compile(r"\$\$|\\\[|\\\]|\\\(|\\\)|(?<!\\)\$")
_MATH_CLOSER = {"$$": "$$", "\\[": "\\]", "\\(": "\\)", "$": "$"}


def _math_groups(text: str) -> list[str]:
    """Contents of ``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]`` in order.

    One pass over the delimiters: a lazy regex per opener is quadratic on cut-off output.
    """
    groups = []
    opener: re.Match[str] | None = None
    for m in _MATH_DELIM.finditer(text):
        if opener is None:
            opener = m if m.group(0) in _MATH_CLOSER else None
        elif m.group(0) == _MATH_CLOSER[opener.group(0)]:
            inner = text[opener.end() : m.start()].strip().rstrip(".").strip()
            if inner:
                groups.append(inner)
            opener = None
    return groups


def _latex_from_span(span: str) -> str | None:
    groups = _math_groups(span)
    s = groups[0] if groups else re.split(r"\.\s|\n", span, maxsplit=1)[0]
    s = s.strip().rstrip(".").strip()
    return s or None


def _latex_fallback(text: str) -> str | None:
    groups = _math_groups(text)
    return groups[-1] if groups else _numeric_fallback(text)


# --------------------------------------------------------------------------- the cascade

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_BARE_BOX = re.compile(r"[^\s${}]+")
_HASHES = re.compile(r"####\s*([^\n]*)")
_PHRASE = re.compile(
    r"(?:\b(?:final|correct|right|best)\s+(?:answer|option|choice)|\banswer)\b[\s*_]*?"
    r"(?:\bis\b|\bwould\s+be\b|\bshould\s+be\b|\bmust\s+be\b|\bwill\s+be\b|=|:)[ \t*_:]*",
    re.I,
)


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each ``{`` -> index of its matching ``}``, in one pass (so many unbalanced
    boxes stay linear)."""
    closing: dict[int, int] = {}
    stack = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    return closing


def _boxed_spans(text: str) -> list[str]:
    """Contents of the last MAX_CANDIDATES boxes, in order, each cut to MAX_SPAN_CHARS.

    Boxes are visited from the end and only those are sliced: slicing every box of
    nested output ("\\boxed{" * n) would copy O(n^2) characters.
    """
    boxes = list(_BOXED.finditer(text))
    closing = _closing_braces(text) if boxes else {}
    spans: list[str] = []
    for m in reversed(boxes):
        if len(spans) == MAX_CANDIDATES:
            break
        i = m.end()
        if i < len(text) and text[i] == "{":
            if i in closing:  # an unbalanced box (cut-off output) yields nothing
                spans.append(text[i + 1 : min(closing[i], i + 1 + MAX_SPAN_CHARS)])
        else:
            bare = _BARE_BOX.match(text, i, i + MAX_SPAN_CHARS)  # "\boxed 5"
            if bare:
                spans.append(bare.group(0))
    return spans[::-1]


def _phrase_spans(text: str) -> list[str]:
    anchors = list(_PHRASE.finditer(text))
    spans = []
    for i in range(max(0, len(anchors) - MAX_CANDIDATES), len(anchors)):  # only the last ones are read
        m = anchors[i]
        # A span runs to the end of its line, or to the next anchor ("5, wait no. The answer is 6").
        end = anchors[i + 1].start() if i + 1 < len(anchors) else len(text)
        span = text[m.end() : end].split("\n", 1)[0]
        if not span.strip(" *_:$"):  # "The answer is:\n\n42"
            span = text[m.end() : end].strip().split("\n", 1)[0]
        spans.append(span)
    return spans


_SPAN_PARSERS: dict[str, Callable[[str, bool, str], str | None]] = {
    "numeric": lambda s, boxed, _l: _numeric_from_span(s, boxed),
    "letter": lambda s, _b, letters: _letter_from_span(s, letters),
    "boolean": lambda s, _b, _l: _bool_from_span(s),
    "latex": lambda s, _b, _l: _latex_from_span(s),
}


def extract_answer(text: str, answer_type: str, choices: int | None = None) -> str | None:
    """The final answer in ``text`` (already outside the think block), or None.

    Stages run in priority order; within a stage the last parseable match wins.
    Inside one anchored span (e.g. after "the answer is") the first token wins.
    """
    check_answer_type(answer_type)
    if not isinstance(text, str) or not text.strip():
        return None
    letters = _letters(choices)
    parse = _SPAN_PARSERS[answer_type]
    stages: list[tuple[list[str], bool]] = [
        (_boxed_spans(text), True),
        ([m.group(1) for m in _HASHES.finditer(text)], True),
        (_phrase_spans(text), False),
    ]
    for spans, boxed in stages:
        for span in reversed(spans[-MAX_CANDIDATES:]):
            found = parse(span[:MAX_SPAN_CHARS], boxed, letters)
            if found is not None:
                return found
    if answer_type == "numeric":
        return _numeric_fallback(text)
    if answer_type == "letter":
        return _letter_fallback(text, letters)
    if answer_type == "boolean":
        return _bool_fallback(text)
    return _latex_fallback(text)


# --------------------------------------------------------------------------- LaTeX equivalence


def _norm_latex(s: str) -> str:
    s = _clean(s).replace("$", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)  # \frac12
    s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)  # \sqrt2
    return re.sub(r"\s+|\\%|%", "", s).rstrip(".")


_TOKEN = re.compile(r"\s*(\d+\.?\d*|\.\d+|\\[a-zA-Z]+|[a-zA-Z]|[-+*/^(){}\[\]])")
_FUNCS = {"\\sqrt", "\\frac"}
# Polynomial-identity style check: expressions in the same variables that agree at a few
# arbitrary points are equal (x + 1 vs 1 + x) without a trip through sympy.
_POINTS = (0.5377, 1.8339, -2.2588)


class _Eval:
    """Recursive-descent evaluator for arithmetic LaTeX: + - * / ^, \\frac, \\sqrt, \\pi, letters."""

    def __init__(self, text: str) -> None:
        s = _norm_latex(text).replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
        self.tokens: list[str] = []
        pos = 0
        while pos < len(s):
            m = _TOKEN.match(s, pos)
            if not m:
                raise ValueError(s[pos:])
            self.tokens.append(m.group(1))
            pos = m.end()
        self.variables = frozenset(t for t in self.tokens if t.isalpha())
        self.env: dict[str, float] = {}
        self.i = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"expected {expected}, got {tok}")
        self.i += 1
        return tok

    def run(self, env: dict[str, float]) -> float:
        self.env, self.i = env, 0
        value = self.expr()
        if self.peek() is not None:
            raise ValueError("trailing input")
        return value

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "/"):
                self.take()
                rhs = self.unary()
                value = value * rhs if tok == "*" else value / rhs
            elif tok is not None and (tok[0].isalnum() or tok[0] == "." or tok in ("(", "{", "\\pi") or tok in _FUNCS):
                value *= self.unary()  # implicit product: 2\sqrt{2}, 3\pi, 2xy
            else:
                return value

    def _nested(self, parse: Callable[[], float]) -> float:
        """Run one recursive step, refusing nesting past MAX_NESTING: "((((...", "--...-1",
        "2^2^...", "\\frac\\frac..." recurse once per level, so the input picks the depth."""
        if self.depth >= MAX_NESTING:
            raise ValueError("nested too deeply")
        self.depth += 1
        try:
            return parse()
        finally:
            self.depth -= 1

    def unary(self) -> float:
        return self._nested(self._unary)

    def atom(self) -> float:
        return self._nested(self._atom)

    def _unary(self) -> float:
        if self.peek() in ("-", "+"):
            return -self.unary() if self.take() == "-" else self.unary()
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.unary()
            if abs(exponent) > 1000:
                raise ValueError("exponent too large")
            result = base**exponent
            if isinstance(result, complex):
                raise ValueError("complex")
            return float(result)
        return base

    def _atom(self) -> float:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return float(tok)
        if tok.isalpha():
            return self.env[tok]
        if tok == "\\pi":
            return math.pi
        if tok in ("(", "{", "["):
            value = self.expr()
            self.take({"(": ")", "{": "}", "[": "]"}[tok])
            return value
        if tok == "\\frac":
            return self.atom() / self.atom()
        if tok == "\\sqrt":
            index = 2.0
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
            radicand = self.atom()
            if radicand < 0:
                raise ValueError("complex")
            return float(radicand ** (1.0 / index))
        raise ValueError(f"unsupported token {tok}")


def _eval_latex(s: str) -> tuple[frozenset[str], list[float]] | None:
    """(variables, values at the probe points), or None when outside the evaluator's grammar."""
    if len(s) > MAX_LATEX_CHARS:
        return None
    try:
        ev = _Eval(s)
        if len(ev.variables) > 3:
            return None
        names = sorted(ev.variables)
        points = _POINTS if names else _POINTS[:1]
        values = [ev.run({n: p * (k + 1) for k, n in enumerate(names)}) for p in points]
    except (ValueError, KeyError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return (ev.variables, values) if all(math.isfinite(v) for v in values) else None


_math_verify: tuple[Any, Any] | None | bool = False  # False = not probed yet


def _load_math_verify() -> tuple[Any, Any] | None:
    global _math_verify
    if _math_verify is False:
        try:
            from math_verify import parse, verify

            _math_verify = (parse, verify)
        except Exception:  # not installed, or a broken antlr runtime
            _math_verify = None
    return _math_verify if isinstance(_math_verify, tuple) else None


def _math_verify_equal(pred: str, gold: str) -> bool | None:
    """Math-Verify's opinion, or None when unavailable, off the main thread, or unparseable."""
    if max(len(pred), len(gold)) > MAX_LATEX_CHARS:  # its timeouts bound time, not parser memory
        return None
    mv = _load_math_verify()
    if mv is None or threading.current_thread() is not threading.main_thread():
        return None
    parse, verify = mv
    try:
        gold_parsed = parse(gold if "$" in gold else f"${gold}$", parsing_timeout=MATH_VERIFY_TIMEOUT_S)
        pred_parsed = parse(pred if "$" in pred else f"${pred}$", parsing_timeout=MATH_VERIFY_TIMEOUT_S)
        if not gold_parsed or not pred_parsed:
            return None
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=MATH_VERIFY_TIMEOUT_S))
    except Exception:
        return None


def _latex_equal(pred: str, gold: str) -> bool:
    if _norm_latex(pred) == _norm_latex(gold):
        return True
    a, b = normalize_numeric(pred), normalize_numeric(gold)
    if a is not None and a == b:
        return True
    x, y = _eval_latex(pred), _eval_latex(gold)
    if x is not None and y is not None and x[0] == y[0]:  # same variables: compare values
        pairs = list(zip(x[1], y[1], strict=True))
        if all(math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12) for u, v in pairs):
            return True
        # Clearly different: skip the slow sympy path. Near misses ("0.333333" vs 1/3)
        # and percents (Math-Verify reads 50% as 50 or as 0.5) still go to Math-Verify.
        if "%" not in pred + gold and any(not math.isclose(u, v, rel_tol=1e-4) for u, v in pairs):
            return False
    return _math_verify_equal(pred, gold) is True


def answers_match(extracted: str | None, gold: str, answer_type: str) -> bool:
    """Whether an extracted answer equals the canonical one, by the type's rules."""
    check_answer_type(answer_type)
    if extracted is None or gold is None:
        return False
    extracted, gold = str(extracted), str(gold)
    if answer_type == "numeric":
        a, b = normalize_numeric(extracted), normalize_numeric(gold)
        if a is not None and b is not None:
            return a == b
        return _norm_latex(extracted).lower() == _norm_latex(gold).lower() != ""
    if answer_type == "letter":
        got = _letter_from_span(extracted, string.ascii_uppercase)
        return got is not None and got == _letter_from_span(gold, string.ascii_uppercase)
    if answer_type == "boolean":
        got = normalize_boolean(extracted)
        return got is not None and got == normalize_boolean(gold)
    return _latex_equal(extracted, gold)


def verify_response(
    response: str, gold: str, answer_type: str, choices: int | None = None, *, expect_think: bool = False
) -> Verdict:
    """Extract from the text after ``</think>`` and compare with ``gold``.

    Total on text: a response or gold over MAX_RESPONSE_CHARS, or a record that trips an
    unexpected error, gets an ``unverifiable`` verdict (incorrect, with ``error`` saying
    why) instead of raising, so one hostile output never costs the rest of a batch.
    Only an unknown ``answer_type`` raises (a caller's bug, not a model's).
    """
    check_answer_type(answer_type)
    for name, text in (("response", response), ("answer", gold)):
        if isinstance(text, str) and len(text) > MAX_RESPONSE_CHARS:
            return unverifiable(f"{name} is {len(text):,} characters, over the {MAX_RESPONSE_CHARS:,} limit")
    try:
        return _verify(response, gold, answer_type, choices, expect_think)
    except Exception as exc:  # the limits should make this unreachable; if not, one record pays, not the batch
        return unverifiable(f"{type(exc).__name__}: {exc}"[:300])


def _verify(response: str, gold: str, answer_type: str, choices: int | None, expect_think: bool) -> Verdict:
    split = split_think(response, expect_think=expect_think)
    if split.truncated:
        return Verdict(None, False, True, "truncated")
    extracted = extract_answer(split.answer_text, answer_type, choices)
    if extracted is None:
        return Verdict(None, False, False, "no_answer")
    correct = answers_match(extracted, gold, answer_type)
    return Verdict(extracted, correct, False, "match" if correct else "mismatch")


# --------------------------------------------------------------------------- batches

VerifyArgs = tuple[str, str, str, int | None, bool]


def _verify_args(args: VerifyArgs) -> Verdict:
    response, gold, answer_type, choices, expect_think = args
    return verify_response(response, gold, answer_type, choices, expect_think=expect_think)


def verify_batch(
    records: Iterable[Mapping[str, Any]],
    workers: int | None = None,
    *,
    expect_think: bool = False,
    executor: Executor | None = None,
    chunksize: int = 64,
) -> list[Verdict]:
    """Verify many ``{"response", "answer", "answer_type", "choices"?}`` records, in order.

    Records run in worker processes (their main threads), where Math-Verify's signal
    timeouts work and a pathological expression cannot hang the caller's thread.
    ``workers=1`` from a main thread runs in-process; pass ``executor`` to reuse a pool.
    A record that cannot be judged gets an ``unverifiable`` verdict, never an exception
    (see :func:`verify_response`), so the other verdicts of the batch always come back.
    """
    args: list[VerifyArgs] = []
    for r in records:
        check_answer_type(r["answer_type"])
        choices = r.get("choices")
        count = len(choices) if isinstance(choices, list | tuple) else choices  # the options themselves
        args.append((r["response"], str(r["answer"]), r["answer_type"], count, expect_think))
    in_main = threading.current_thread() is threading.main_thread()
    if executor is None and ((workers == 1 and in_main) or not args):
        return [_verify_args(a) for a in args]
    if executor is not None:
        return list(executor.map(_verify_args, args, chunksize=chunksize))
    with verification_pool(workers) as pool:
        return list(pool.map(_verify_args, args, chunksize=chunksize))


def verification_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """A process pool for :func:`verify_batch` (reuse it across batches to pay start-up once)."""
    # forkserver: forking a caller that has threads (Prefect, asyncio) can deadlock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
