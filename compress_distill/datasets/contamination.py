"""Contamination check: every training question against every evaluation question.

Two kinds of match, on the text a model sees of a question (the question, then its choices, without
the `A)` labels, which are formatting: `render_question` adds them, another pipeline writes `(A)`):

- **exact**: the normalised texts are equal.
- **ngram**: the two share a run of `n` normalised tokens (default 13: GPT-3's contamination study and
  the lm-eval "janitor" use word 13-grams; s1/open-r1 use 8 on competition problems). Questions with
  fewer than `n` tokens have no n-gram: only an exact match can flag them. In the mini world every
  question is under 13 tokens, so there only exact matches can occur.

Normalisation (`tokens`): Unicode NFKC (full-width digits, ligatures and non-breaking spaces, which
rehosted copies introduce, fold to their plain forms), casefold, every Unicode punctuation character
(category P*) replaced by a space except the arithmetic `- * / %` (so "(47 + 38)" and "(47 - 38)",
or "6 * 7" and "6 / 7", stay different questions), then words (`\\w+`) and each remaining symbol
(`+ = < > $ ^` ...) are tokens; whitespace runs only separate tokens.

Template text: a benchmark's boilerplate ("which of the following is the most likely cause of this
patient's symptoms", 14 tokens) would tie unrelated questions together, and a 13-gram can be one
content word plus boilerplate. So every token inside an 8-gram (`TEMPLATE_NGRAM`) that occurs in at
least `template_min_questions` distinct questions (training and evaluation together) is template
text, and no evidence n-gram may contain one. The report counts the template 8-grams and lists the
most common, so nothing is set aside unseen. A copied question keeps its content, whose runs stay rare.

Scale: exact matches are a dict lookup of the normalised text; n-grams are uint64 rolling hashes of
token ids (ids from the evaluation side's vocabulary, so a training n-gram with a token the evaluation
side never uses cannot match and is skipped), looked up in the sorted hashes of the evaluation side,
one pass over the training questions in chunks (bounded memory). Every reported n-gram is checked on
the tokens themselves, so a hash collision can never produce a pair.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from ..config import ContaminationSpec
from ..store import atomic_write_text, write_parquet

Row = TypeVar("Row", bound=Mapping[str, Any])
REASON = "contaminated"  # the quarantine reason code of a removed training question
KEEP_PUNCT = frozenset("-*/%")
NORMALIZATION = ("NFKC, casefold, Unicode punctuation (P*) removed except - * / %, tokens = words and "
                 "single symbols, whitespace collapsed; compared text = question + choices (no letters)")
PAIRS_FILE, REPORT_FILE = "contamination.parquet", "contamination.json"
EVIDENCE_CHARS = 200
CHUNK = 10_000  # training questions per vectorised batch
# Template text is found with shorter runs than the evidence: boilerplate sentences are 8-15 tokens
# ("which of the following is the most likely diagnosis" is 9), so a 13-gram can be one content
# word plus boilerplate; every token inside a frequent 8-gram is template, and no evidence n-gram
# may contain one.
TEMPLATE_NGRAM = 8
_TOKEN = re.compile(r"\w+|\S")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling hash

PAIR_SCHEMA = pa.schema([
    pa.field("train_id", pa.string()), pa.field("train_dataset", pa.string()),
    pa.field("eval_id", pa.string()), pa.field("eval_dataset", pa.string()),
    pa.field("kind", pa.string()),  # exact | ngram
    pa.field("shared_ngrams", pa.int64()),  # distinct non-template n-grams the two share (0 for exact)
    pa.field("evidence", pa.string()),  # the first shared n-gram, or the start of the normalised text
])


class _PunctTable(dict[int, str]):
    """str.translate table: punctuation (but KEEP_PUNCT) -> space, anything else -> itself, filled
    on first sight of each character (a table of all of Unicode takes seconds to build)."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        self[cp] = " " if unicodedata.category(ch).startswith("P") and ch not in KEEP_PUNCT else ch
        return self[cp]


_PUNCT = _PunctTable()


def compared_text(question: str, choices: Sequence[str] | None) -> str:
    return question if not choices else question + " " + " ".join(choices)


def tokens(text: str) -> list[str]:
    """The normalised tokens of a text (see the module docstring)."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold().translate(_PUNCT))


def row_tokens(row: Mapping[str, Any]) -> list[str]:
    return tokens(compared_text(row["question"], row.get("choices")))


@dataclass(frozen=True)
class Pair:
    train_id: str
    train_dataset: str
    eval_id: str
    eval_dataset: str
    kind: str
    shared_ngrams: int
    evidence: str


@dataclass
class Report:
    """All pairs found, and what the counts and the quarantine are derived from."""

    ngram: int
    template_min_questions: int
    train_questions: int
    eval_questions: int
    pairs: list[Pair]
    template_ngrams: int = 0  # distinct 8-grams found to be template text (shared by train and eval)
    template_examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def flagged_train_ids(self) -> set[str]:
        return {p.train_id for p in self.pairs}

    def per_dataset(self, train_rows: Iterable[Mapping[str, Any]], quarantined: bool) -> dict[str, dict[str, int]]:
        """dataset -> flagged training questions, those removed, and evaluation questions matched."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"train_flagged": 0, "train_quarantined": 0,
                                                              "eval_matched": 0})
        flagged = self.flagged_train_ids
        for r in train_rows:
            if r["id"] in flagged:
                out[r["dataset"]]["train_flagged"] += 1
                out[r["dataset"]]["train_quarantined"] += int(quarantined)
        for ds, ids in _group(self.pairs, lambda p: p.eval_dataset, lambda p: p.eval_id).items():
            out[ds]["eval_matched"] += len(ids)
        return {k: dict(v) for k, v in sorted(out.items())}


def _group(pairs: Iterable[Pair], key: Any, value: Any) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for p in pairs:
        out[key(p)].add(value(p))
    return out


# --------------------------------------------------------------------------- n-gram hashing

def _ngram_hashes(ids: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, question index, start position in the question) of every n-gram of id-0-free windows
    that lie inside one question. `ids` holds all questions' token ids back to back; `offsets[i]` is
    where question i starts (len(offsets) = questions + 1)."""
    m = len(ids) - n + 1
    if m <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.uint64), empty, empty
    u = ids.astype(np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):  # uint64 arithmetic wraps: a polynomial hash modulo 2**64
        h = h * _MULT + u[k:k + m]
    starts = np.arange(m, dtype=np.int64)
    q = np.searchsorted(offsets, starts, side="right") - 1
    inside = starts + n <= offsets[q + 1]
    zeros = np.concatenate(([0], np.cumsum(ids == 0)))
    known = zeros[starts + n] - zeros[starts] == 0  # id 0: a token the evaluation side never uses
    keep = inside & known
    return h[keep], q[keep], starts[keep] - offsets[q[keep]]


def _ids(token_lists: Sequence[list[str]], vocab: dict[str, int], grow: bool) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    offsets = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
    flat = list(chain.from_iterable(token_lists))
    if grow:
        for t in flat:
            if t not in vocab:
                vocab[t] = len(vocab) + 1
    # id 0: a token the evaluation side never uses
    return np.fromiter(map(vocab.get, flat, repeat(0)), dtype=np.int64, count=len(flat)), offsets


def _member(sorted_keys: np.ndarray, h: np.ndarray) -> np.ndarray:
    """`np.isin(h, sorted_keys)` without re-sorting the keys on every call (binary search)."""
    if not len(sorted_keys):
        return np.zeros(len(h), dtype=bool)
    order = np.argsort(h)  # sorted queries: numpy's binary search then starts where the last one ended
    hs = h[order]
    out = np.empty(len(h), dtype=bool)
    out[order] = sorted_keys[np.minimum(np.searchsorted(sorted_keys, hs), len(sorted_keys) - 1)] == hs
    return out


def _distinct_pairs(h: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (hash, question) pairs, sorted by hash, then question."""
    order = np.lexsort((q, h))
    hs, qs = h[order], q[order]
    keep = np.ones(len(hs), dtype=bool)
    keep[1:] = (hs[1:] != hs[:-1]) | (qs[1:] != qs[:-1])
    return hs[keep], qs[keep]


# --------------------------------------------------------------------------- the check

@dataclass
class _Index:
    """The evaluation side's k-grams: one row per (hash, question), sorted; each distinct hash
    (`keys`) with its first row and its count of distinct questions (`df`)."""

    questions_of: np.ndarray  # the question of each (hash, question) row
    keys: np.ndarray
    first: np.ndarray
    df: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, offsets: np.ndarray, k: int) -> _Index:
        h, q, _ = _ngram_hashes(ids, offsets, k)
        hs, qs = _distinct_pairs(h, q)
        keys, first, df = np.unique(hs, return_index=True, return_counts=True)  # hs is sorted: cheap
        return cls(qs, keys, first, df)

    def questions(self, h: int) -> list[int]:
        i = int(np.searchsorted(self.keys, np.uint64(h)))
        return [int(j) for j in self.questions_of[self.first[i]:self.first[i] + self.df[i]]]


@dataclass
class _Hits:
    """Training k-grams found in an index: hash, training question, start in that question."""

    h: list[np.ndarray] = field(default_factory=list)
    q: list[np.ndarray] = field(default_factory=list)
    s: list[np.ndarray] = field(default_factory=list)

    def add(self, index: _Index, ids: np.ndarray, offsets: np.ndarray, k: int, base: int) -> None:
        h, q, s = _ngram_hashes(ids, offsets, k)
        hit = _member(index.keys, h)
        self.h.append(h[hit])
        self.q.append(q[hit] + base)
        self.s.append(s[hit])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.h:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.h), np.concatenate(self.q), np.concatenate(self.s)


def find_contamination(train_rows: Sequence[Mapping[str, Any]], eval_rows: Sequence[Mapping[str, Any]],
                       spec: ContaminationSpec) -> Report:
    """Every (training question, evaluation question) pair that matches exactly or shares an
    n-gram free of template text. Rows need `id`, `dataset`, `question` and `choices`."""
    n, m = spec.ngram, TEMPLATE_NGRAM
    eval_toks = [row_tokens(r) for r in eval_rows]
    eval_norm = [" ".join(t) for t in eval_toks]
    exact: dict[str, list[int]] = defaultdict(list)
    for j, text in enumerate(eval_norm):
        if text:
            exact[text].append(j)
    vocab: dict[str, int] = {}
    e_ids, e_off = _ids(eval_toks, vocab, grow=True)
    grams, short = _Index.of(e_ids, e_off, n), _Index.of(e_ids, e_off, m)
    del e_ids, e_off, eval_toks

    exact_pairs: set[tuple[int, int]] = set()
    hits_n, hits_m = _Hits(), _Hits()
    lens: list[np.ndarray] = []
    for lo in range(0, len(train_rows), CHUNK):
        toks = [row_tokens(r) for r in train_rows[lo:lo + CHUNK]]
        for i, t in enumerate(toks):
            for j in exact.get(" ".join(t), ()):
                exact_pairs.add((lo + i, j))
        ids, off = _ids(toks, vocab, grow=False)
        lens.append(np.diff(off))
        if len(grams.keys):
            hits_n.add(grams, ids, off, n, lo)
        if len(short.keys):
            hits_m.add(short, ids, off, m, lo)
    starts = np.concatenate(([0], np.cumsum(np.concatenate(lens)) if lens else [])).astype(np.int64)

    pairs = [Pair(str(train_rows[i]["id"]), str(train_rows[i]["dataset"]), str(eval_rows[j]["id"]),
                  str(eval_rows[j]["dataset"]), "exact", 0, eval_norm[j][:EVIDENCE_CHARS])
             for i, j in sorted(exact_pairs)]
    report = Report(n, spec.template_min_questions, len(train_rows), len(eval_rows), pairs)
    template_at = _template(report, train_rows, short, *hits_m.arrays(), starts, m)
    _ngram_pairs(report, train_rows, eval_rows, eval_norm, exact_pairs, grams, *hits_n.arrays(), starts,
                 template_at, m)
    report.pairs.sort(key=lambda p: (p.train_dataset, p.train_id, p.eval_dataset, p.eval_id))
    return report


def _template(report: Report, train_rows: Sequence[Mapping[str, Any]], short: _Index, h: np.ndarray,
              q: np.ndarray, s: np.ndarray, starts: np.ndarray, m: int) -> np.ndarray:
    """The template m-grams (in at least `template_min_questions` distinct questions, training and
    evaluation together): counted and exemplified in the report; returns where they start in the
    training corpus (global token positions, sorted)."""
    if not len(h):
        return np.zeros(0, np.int64)
    keys, t_df = np.unique(_distinct_pairs(h, q)[0], return_counts=True)
    total = short.df[np.searchsorted(short.keys, keys)] + t_df
    template = keys[total >= report.template_min_questions]
    report.template_ngrams = int(len(template))
    for i in np.argsort(-total, kind="stable")[:10]:
        if total[i] < report.template_min_questions:
            break
        at = int(np.flatnonzero(h == keys[i])[0])
        report.template_examples.append({"questions": int(total[i]),
                                         "ngram": " ".join(row_tokens(train_rows[int(q[at])])[s[at]:s[at] + m])})
    is_t = _member(template, h)
    return np.sort(starts[q[is_t]] + s[is_t])


def _ngram_pairs(report: Report, train_rows: Sequence[Mapping[str, Any]], eval_rows: Sequence[Mapping[str, Any]],
                 eval_norm: list[str], exact_pairs: set[tuple[int, int]], grams: _Index, h: np.ndarray,
                 q: np.ndarray, s: np.ndarray, starts: np.ndarray, template_at: np.ndarray, m: int) -> None:
    """Pairs from the training n-grams found on the evaluation side; an n-gram that overlaps template
    text (a template m-gram occurrence starting in (g - m, g + n) for a window at g) is no evidence."""
    n = report.ngram
    g = starts[q] + s
    overlap = np.searchsorted(template_at, g + n, "left") - np.searchsorted(template_at, g - m, "right")
    clean = overlap == 0
    shared: dict[tuple[int, int], list[str]] = defaultdict(list)
    token_cache: dict[int, list[str]] = {}
    for hh, qi, si in zip(h[clean].tolist(), q[clean].tolist(), s[clean].tolist(), strict=True):
        toks = token_cache.setdefault(qi, row_tokens(train_rows[qi]))
        gram = " ".join(toks[si:si + n])
        for j in grams.questions(hh):
            if (qi, j) in exact_pairs or f" {gram} " not in f" {eval_norm[j]} ":
                continue  # an exact pair is listed once; a hash collision is no evidence
            if gram not in shared[(qi, j)]:
                shared[(qi, j)].append(gram)
    for (i, j), found in sorted(shared.items()):
        report.pairs.append(Pair(str(train_rows[i]["id"]), str(train_rows[i]["dataset"]), str(eval_rows[j]["id"]),
                                 str(eval_rows[j]["dataset"]), "ngram", len(found), found[0][:EVIDENCE_CHARS]))


# --------------------------------------------------------------------------- the stage's use

def decontaminate(train_rows: Sequence[Row], eval_rows: Sequence[Mapping[str, Any]],
                  spec: ContaminationSpec) -> tuple[list[Row], list[dict[str, Any]], Report]:
    """The check, and the training rows that remain: all of them when `spec.quarantine` is off,
    else all but the flagged ones, which come back as quarantine records (reason `contaminated`)."""
    report = find_contamination(train_rows, eval_rows, spec)
    if not spec.quarantine or not report.pairs:
        return list(train_rows), [], report
    why: dict[str, list[Pair]] = defaultdict(list)
    for p in report.pairs:
        why[p.train_id].append(p)
    kept: list[Row] = []
    removed: list[dict[str, Any]] = []
    for r in train_rows:
        ps = why.get(str(r["id"]))
        if ps is None:
            kept.append(r)
            continue
        first = ps[0]
        detail = (f"{first.kind} match with {first.eval_id}"
                  + (f" ({first.shared_ngrams} shared {report.ngram}-grams, e.g. {first.evidence!r})"
                     if first.kind == "ngram" else "")
                  + (f" and {len(ps) - 1} more evaluation question(s)" if len(ps) > 1 else ""))
        removed.append({"dataset": r["dataset"], "split": r["split"], "id": r["id"], "reason": REASON,
                        "detail": detail, "row": json.dumps(dict(r), ensure_ascii=False, sort_keys=True)})
    return kept, removed, report


def write_report(report: Report, train_rows: Sequence[Mapping[str, Any]], spec: ContaminationSpec,
                 out_dir: Path) -> dict[str, Any]:
    """`contamination.parquet` (one row per pair) and `contamination.json` (settings and counts; no
    timings, so that the same inputs give the same bytes)."""
    write_parquet([asdict(p) for p in report.pairs], out_dir / PAIRS_FILE, schema=PAIR_SCHEMA)
    kinds: dict[str, int] = defaultdict(int)
    for p in report.pairs:
        kinds[p.kind] += 1
    summary = {
        "normalization": NORMALIZATION, "ngram": report.ngram, "quarantine": spec.quarantine,
        "template_min_questions": report.template_min_questions,
        "train_questions": report.train_questions, "eval_questions": report.eval_questions,
        "pairs": len(report.pairs), "pairs_by_kind": dict(sorted(kinds.items())),
        "train_flagged": len(report.flagged_train_ids),
        "train_quarantined": len(report.flagged_train_ids) if spec.quarantine else 0,
        "template_ngrams": report.template_ngrams, "template_examples": report.template_examples,
        "datasets": report.per_dataset(train_rows, spec.quarantine),
    }
    atomic_write_text(out_dir / REPORT_FILE, json.dumps(summary, indent=1, sort_keys=True))
    return summary


def contamination_counts(pool_dir: str | Path) -> dict[str, dict[str, int]]:
    """Per dataset, from a committed train-pool artifact: `train_flagged`, `train_quarantined` (removed
    before generation) and `eval_matched` (evaluation questions with at least one pair). For Table 1.
    A dataset absent from the result had no pair."""
    path = Path(pool_dir) / REPORT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no contamination report (a train pool prepared before the check existed?)")
    return {k: dict(v) for k, v in json.loads(path.read_text())["datasets"].items()}
