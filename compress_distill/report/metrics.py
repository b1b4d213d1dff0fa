"""The paper's metrics, computed from rows. Pure: no I/O, no plotting.

Evaluation (paper 5.4, Tables 3, 7, 9), from records with the keys
  id, dataset, group, correct: bool, truncated: bool, completion_tokens: int,
  reasoning_chars: int, reasoning_tokens: int | None, failed: bool (optional)
- per-group accuracy with the binomial standard error sqrt(p(1-p)/n);
- overall accuracy over *all records* (not the mean of group accuracies) with its SE;
  a failed request (`failed`) counts as a wrong answer there, and as `failed`;
- mean completion tokens over all answered records and over the non-truncated ones;
- truncation rate and median reasoning characters (and tokens, over records that have
  them), over answered records: a failed request has no response to measure;
- Acc/1k tokens = overall accuracy / (mean completion tokens (all) / 1000),
  e.g. 0.528 / (2954 / 1000) = 0.1787 (Table 9).

A value that is undefined (an empty group, no non-truncated record, zero tokens)
is `None`, never NaN: NaN leaks into tables as "nan" and compares false with
everything, which silently breaks orderings in the findings.

Training (Table 6): token ratio and wall-clock speed-up of each cell against the
raw cell of the same (teacher, student, method).

Compression (Tables 2 and 5; the compress stage's stats.json): per (teacher, compressor,
dataset) mean raw characters, mean compressed characters, mean per-example rho =
compressed / raw, and the rows by compression status.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GROUP_PREFIXES = ("acc:", "se:", "n:")


def binomial_se(p: float | None, n: int) -> float | None:
    """sqrt(p(1-p)/n); None when n == 0 or p is None."""
    if p is None or n <= 0:
        return None
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def acc_per_1k_tokens(accuracy: float | None, avg_completion_tokens: float | None) -> float | None:
    """Accuracy per 1,000 mean completion tokens; None when either is missing or tokens are 0."""
    if accuracy is None or avg_completion_tokens is None or avg_completion_tokens <= 0:
        return None
    return accuracy / (avg_completion_tokens / 1000.0)


def _mean(xs: Sequence[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _median(xs: Sequence[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _finite(x: Any) -> float | None:
    """A float, or None for None/NaN/inf (guards rows read back from Parquet or pandas)."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class GroupAccuracy:
    group: str
    n: int
    correct: int
    accuracy: float | None  # None for an empty group
    se: float | None


@dataclass(frozen=True)
class EvalMetrics:
    """One checkpoint's evaluation metrics. Every float is None when undefined (see module doc)."""

    n: int
    correct: int
    accuracy: float | None
    accuracy_se: float | None
    groups: tuple[GroupAccuracy, ...]
    avg_completion_tokens: float | None
    avg_completion_tokens_excl_truncated: float | None
    truncation_rate: float | None
    median_reasoning_chars: float | None
    median_reasoning_tokens: float | None
    acc_per_1k_tokens: float | None
    failed: int = 0  # records whose request failed (scored wrong)

    def group(self, name: str) -> GroupAccuracy | None:
        return next((g for g in self.groups if g.group == name), None)

    def to_row(self) -> dict[str, Any]:
        """Flat row (Parquet/JSON friendly). Groups become `acc:<g>`, `se:<g>`, `n:<g>` in group order."""
        row: dict[str, Any] = {
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "accuracy_se": self.accuracy_se,
            "avg_completion_tokens": self.avg_completion_tokens,
            "avg_completion_tokens_excl_truncated": self.avg_completion_tokens_excl_truncated,
            "truncation_rate": self.truncation_rate,
            "median_reasoning_chars": self.median_reasoning_chars,
            "median_reasoning_tokens": self.median_reasoning_tokens,
            "acc_per_1k_tokens": self.acc_per_1k_tokens,
            "failed": self.failed,
        }
        for g in self.groups:
            row[f"acc:{g.group}"] = g.accuracy
            row[f"se:{g.group}"] = g.se
            row[f"n:{g.group}"] = g.n
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EvalMetrics:
        """Inverse of `to_row` (extra keys such as `cell` are ignored; NaN reads as None)."""
        groups = []
        for key in row:
            if key.startswith("acc:"):
                name = key[4:]
                n = int(_finite(row.get(f"n:{name}")) or 0)
                acc = _finite(row[key])
                correct = round(acc * n) if acc is not None else 0
                groups.append(GroupAccuracy(name, n, correct, acc, _finite(row.get(f"se:{name}"))))
        acc = _finite(row.get("accuracy"))
        return cls(
            n=int(_finite(row.get("n")) or 0),
            correct=int(_finite(row.get("correct")) or 0),
            accuracy=acc,
            accuracy_se=_finite(row.get("accuracy_se")),
            groups=tuple(groups),
            avg_completion_tokens=_finite(row.get("avg_completion_tokens")),
            avg_completion_tokens_excl_truncated=_finite(row.get("avg_completion_tokens_excl_truncated")),
            truncation_rate=_finite(row.get("truncation_rate")),
            median_reasoning_chars=_finite(row.get("median_reasoning_chars")),
            median_reasoning_tokens=_finite(row.get("median_reasoning_tokens")),
            acc_per_1k_tokens=_finite(row.get("acc_per_1k_tokens")),
            failed=int(_finite(row.get("failed")) or 0),
        )


def eval_metrics(records: Iterable[Mapping[str, Any]], groups: Sequence[str] = ()) -> EvalMetrics:
    """Metrics of one checkpoint's evaluation records.

    `groups` fixes the group order and makes groups with no records appear (accuracy None);
    groups found in the records but not listed follow, sorted.
    """
    by_group: dict[str, list[bool]] = {g: [] for g in groups}
    correct: list[bool] = []
    tokens_all: list[float] = []
    tokens_ok: list[float] = []
    truncated = 0
    failed = 0
    chars: list[float] = []
    rtoks: list[float] = []
    for r in records:
        hit = bool(r["correct"]) and not r.get("failed")
        correct.append(hit)
        by_group.setdefault(str(r.get("group") or "Other"), []).append(hit)
        if r.get("failed"):  # no response: nothing below to measure
            failed += 1
            continue
        tok = float(r.get("completion_tokens") or 0)
        tokens_all.append(tok)
        if r.get("truncated"):
            truncated += 1
        else:
            tokens_ok.append(tok)
        chars.append(float(r.get("reasoning_chars") or 0))
        if r.get("reasoning_tokens") is not None:
            rtoks.append(float(r["reasoning_tokens"]))
    listed = list(dict.fromkeys(groups))
    extra = sorted(g for g in by_group if g not in set(groups))
    group_rows = []
    for g in listed + extra:
        hits = by_group[g]
        p = sum(hits) / len(hits) if hits else None
        group_rows.append(GroupAccuracy(g, len(hits), sum(hits), p, binomial_se(p, len(hits))))
    n = len(correct)
    answered = n - failed
    acc = sum(correct) / n if n else None
    avg_all = _mean(tokens_all)
    return EvalMetrics(
        n=n,
        correct=sum(correct),
        accuracy=acc,
        accuracy_se=binomial_se(acc, n),
        groups=tuple(group_rows),
        avg_completion_tokens=avg_all,
        avg_completion_tokens_excl_truncated=_mean(tokens_ok),
        truncation_rate=truncated / answered if answered else None,
        median_reasoning_chars=_median(chars),
        median_reasoning_tokens=_median(rtoks),
        acc_per_1k_tokens=acc_per_1k_tokens(acc, avg_all),
        failed=failed,
    )


# ---------------------------------------------------------------- training (Table 6)

CONFIG_AXES = ("teacher", "student", "method")


def default_is_raw(row: Mapping[str, Any]) -> bool:
    """A row is the raw cell when its data kind (or, lacking one, its data name) is 'raw'."""
    return str(row.get("data_kind") or row.get("data")) == "raw"


@dataclass(frozen=True)
class RawComparison:
    """One cell against the raw cell of its (teacher, student, method): the parentheses of Table 6."""

    teacher: str
    student: str
    method: str
    data: str
    raw_data: str | None  # None: no raw cell in this configuration
    token_ratio: float | None  # cell tokens / raw tokens (paper: 0.12-0.30 for compressed)
    speedup: float | None  # raw seconds / cell seconds (paper: 2.0-7.6x for compressed)

    def to_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ratio(num: Any, den: Any) -> float | None:
    a, b = _finite(num), _finite(den)
    if a is None or b is None or b <= 0:
        return None
    return a / b


def ratios_vs_raw(rows: Iterable[Mapping[str, Any]],
                  is_raw: Callable[[Mapping[str, Any]], bool] = default_is_raw) -> list[RawComparison]:
    """Token ratio and speed-up of every row against the raw row of the same (teacher, student, method).

    Rows need teacher, student, method, data, train_seconds, trainable_tokens (either may be None).
    The raw row itself gets ratio 1 and speed-up 1.
    """
    rows = list(rows)
    raw: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for r in rows:
        if is_raw(r):
            raw[tuple(str(r[a]) for a in CONFIG_AXES)] = r
    out = []
    for r in rows:
        teacher, student, method = (str(r[a]) for a in CONFIG_AXES)
        base = raw.get((teacher, student, method))
        out.append(RawComparison(
            teacher=teacher, student=student, method=method, data=str(r["data"]),
            raw_data=None if base is None else str(base["data"]),
            token_ratio=None if base is None else _ratio(r.get("trainable_tokens"), base.get("trainable_tokens")),
            speedup=None if base is None else _ratio(base.get("train_seconds"), r.get("train_seconds")),
        ))
    return out


# ---------------------------------------------------------------- compression (Tables 2 and 5)

OVERALL = "Overall"


@dataclass(frozen=True)
class CompressionStats:
    teacher: str
    compressor: str
    dataset: str  # OVERALL for the (teacher, compressor) summary row (Table 2)
    domain: str | None
    n: int  # the traces the means are over: usable ones with raw_chars > 0 (rho is undefined for an empty raw trace)
    n_rows: int  # every row of the group, unusable ones included
    mean_raw_chars: float | None
    mean_compressed_chars: float | None
    mean_compressed_tokens: float | None  # None when the rows carry no compressed_tokens
    mean_rho: float | None  # mean of per-example compressed/raw, as in the paper
    median_rho: float | None
    ratio_of_means: float | None  # mean compressed chars / mean raw chars
    n_longer: int = 0  # rows by `status` (compression.assemble): compressed longer than raw, kept
    n_truncated: int = 0  # the compressor hit its token cap, kept
    n_empty: int = 0  # empty compressor output, unusable
    n_empty_original: int = 0  # empty raw reasoning, unusable

    def to_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rho(raw_chars: Any, compressed_chars: Any) -> float | None:
    """Per-example character compression ratio; None for an empty raw trace."""
    return _ratio(compressed_chars, raw_chars)


def compression_stats(rows: Iterable[Mapping[str, Any]]) -> list[CompressionStats]:
    """Per (teacher, compressor, dataset) stats, then one OVERALL row per (teacher, compressor).

    The one implementation of Tables 2 and 5 (the compress stage's stats.json and the report).
    Rows: teacher, compressor, dataset, raw_chars, compressed_chars; optional domain,
    compressed_tokens, status, usable (COMPRESSED_SCHEMA rows of `compression.assemble` fit as
    they are). Means are over usable rows (usable == False: empty outputs, not training data)
    with raw_chars > 0; every row counts in `n_rows` and its status count.
    Groups keep the order of first appearance (the pipeline writes them in config order); the
    overall row follows its datasets.
    """
    by: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(str(r["teacher"]), str(r["compressor"]), str(r["dataset"]))].append(r)
    out: list[CompressionStats] = []
    pairs = dict.fromkeys((t, c) for t, c, _ in by)
    for t, c in pairs:
        everything: list[Mapping[str, Any]] = []
        for (t2, c2, ds), rs in by.items():
            if (t2, c2) == (t, c):
                out.append(_stats(t, c, ds, rs))
                everything.extend(rs)
        out.append(_stats(t, c, OVERALL, everything))
    return out


def _stats(teacher: str, compressor: str, dataset: str, rows: Sequence[Mapping[str, Any]]) -> CompressionStats:
    valid = [r for r in rows if r.get("usable") is not False and (_finite(r.get("raw_chars")) or 0) > 0]
    rhos = [x for x in (rho(r["raw_chars"], r.get("compressed_chars")) for r in valid) if x is not None]
    ctoks = [float(r["compressed_tokens"]) for r in valid if _finite(r.get("compressed_tokens")) is not None]
    domains = {str(r["domain"]) for r in rows if r.get("domain")}
    raw = _mean([float(r["raw_chars"]) for r in valid])
    comp = _mean([float(r.get("compressed_chars") or 0) for r in valid])
    status = [r.get("status") for r in rows]
    return CompressionStats(
        teacher=teacher, compressor=compressor, dataset=dataset,
        domain=domains.pop() if len(domains) == 1 else None,
        n=len(valid), n_rows=len(rows),
        mean_raw_chars=raw,
        mean_compressed_chars=comp,
        mean_compressed_tokens=_mean(ctoks),
        mean_rho=_mean(rhos),
        median_rho=_median(rhos),
        ratio_of_means=_ratio(comp, raw),
        n_longer=status.count("longer"), n_truncated=status.count("truncated"),
        n_empty=status.count("empty"), n_empty_original=status.count("empty_original"),
    )
