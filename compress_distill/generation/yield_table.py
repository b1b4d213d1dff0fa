"""Rejection-sampling outputs and the per-dataset yield table (paper Table 4), read from the shards.

Everything here is computed from `OUT/round-NN/` on disk, never from a
process's memory, so it is the same after any number of kills and resumes.

Outputs of `write_outputs(OUT, questions, generator)`:
- `attempts.parquet`: every attempt, one row per (round, id), ATTEMPT_SCHEMA.
- `traces.parquet`: accepted traces, one row per id (its first correct round).
- `yield.json` / `yield.md`: Table 4 rows per dataset plus a Total row.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import fmean
from typing import Any

from compress_distill.generation.shards import compact_to_parquet, scan

log = logging.getLogger(__name__)

ATTEMPT_FIELDS: list[tuple[str, str]] = [
    ("id", "string"), ("round", "int32"), ("dataset", "string"), ("domain", "string"), ("answer", "string"),
    ("answer_type", "string"), ("model", "string"), ("response", "string"), ("reasoning_chars", "int64"),
    ("think_closed", "bool_"), ("correct", "bool_"), ("extracted", "string"), ("truncated", "bool_"),
    ("reject_reason", "string"), ("finish_reason", "string"), ("prompt_tokens", "int64"),
    ("completion_tokens", "int64"), ("latency_s", "float64"), ("attempts", "int32"),
    ("max_tokens_sent", "int64"), ("reasoning_field", "bool_"),
]


def attempt_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ in ATTEMPT_FIELDS])


def round_dirs(out_dir: str | Path) -> list[tuple[int, Path]]:
    found = []
    for d in Path(out_dir).glob("round-*"):
        if d.is_dir() and d.name[6:].isdigit():
            found.append((int(d.name[6:]), d))
    return sorted(found)


def load_attempts(out_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(attempt records sorted by round then id, failure records)."""
    attempts: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for _, d in round_dirs(out_dir):
        s = scan(d)
        attempts.extend(s.records[k] for k in sorted(s.records))
        failures.extend(s.failures)
    return attempts, failures


def accepted(attempts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The first correct attempt per id (attempts must be in round order)."""
    best: dict[str, dict[str, Any]] = {}
    for a in attempts:
        if a["correct"] and a["id"] not in best:
            best[a["id"]] = dict(a)
    return [best[k] for k in sorted(best)]


def yield_table(out_dir: str | Path, questions: Iterable[Mapping[str, Any]], generator: str) -> list[dict[str, Any]]:
    """Table 4 rows: generator, domain, dataset, total, correct per round, cumulative yield, averages."""
    qs = {str(q["id"]): q for q in questions}
    attempts, failures = load_attempts(out_dir)
    n_rounds = max([r for r, _ in round_dirs(out_dir)], default=0)
    acc = accepted(a for a in attempts if a["id"] in qs)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for qid, q in qs.items():
        ds = str(q.get("dataset") or "unknown")
        groups[(str(q.get("domain") or ds), ds)].append(qid)
    by_id = {a["id"]: a for a in acc}
    tried: dict[str, int] = defaultdict(int)
    truncated: dict[str, int] = defaultdict(int)
    for a in attempts:
        tried[a["id"]] += 1
        truncated[a["id"]] += bool(a["truncated"])
    failed_ids = {f["id"] for f in failures} - set(by_id)
    rows = [_row(generator, dom, ds, ids, by_id, tried, truncated, failed_ids, n_rounds)
            for (dom, ds), ids in sorted(groups.items())]
    rows.append(_row(generator, "Total", "Total", list(qs), by_id, tried, truncated, failed_ids, n_rounds))
    return rows


def _row(generator: str, domain: str, dataset: str, ids: list[str], by_id: Mapping[str, Mapping[str, Any]],
         tried: Mapping[str, int], truncated: Mapping[str, int], failed_ids: set[str], n_rounds: int) -> dict[str, Any]:
    got = [by_id[i] for i in ids if i in by_id]
    per_round = [sum(1 for a in got if a["round"] == r) for r in range(1, n_rounds + 1)]
    cum, running = [], 0
    for c in per_round:
        running += c
        cum.append(round(running / len(ids), 4) if ids else 0.0)
    return {
        "generator": generator, "domain": domain, "dataset": dataset, "total": len(ids),
        "correct": len(got), "correct_per_round": per_round, "cumulative_yield": cum,
        "yield": round(len(got) / len(ids), 4) if ids else 0.0,
        # The paper's "Avg. Reason (chars)" and "Avg. Total (tok)": over accepted traces; total tokens are the
        # completion (reasoning + answer), the text a student trains on.
        "avg_reasoning_chars": round(fmean(a["reasoning_chars"] for a in got), 1) if got else None,
        "avg_total_tokens": round(fmean(a["completion_tokens"] or 0 for a in got), 1) if got else None,
        "attempts": sum(tried.get(i, 0) for i in ids),
        "truncated_attempts": sum(truncated.get(i, 0) for i in ids),
        "failed_requests_unsolved": sum(1 for i in ids if i in failed_ids),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown rendering of `yield_table` rows."""
    head = ("| Generator | Domain | Dataset | Total | Correct/round | Cum. yield | Correct | "
            "Avg. Reason (chars) | Avg. Total (tok) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['generator']} | {r['domain']} | {r['dataset']} | {r['total']} | "
                     f"{' / '.join(map(str, r['correct_per_round']))} | "
                     f"{' / '.join(f'{y:.3f}' for y in r['cumulative_yield'])} | {r['correct']} | "
                     f"{_fmt(r['avg_reasoning_chars'])} | {_fmt(r['avg_total_tokens'])} |")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def write_outputs(out_dir: str | Path, questions: Iterable[Mapping[str, Any]], generator: str) -> list[dict[str, Any]]:
    out = Path(out_dir)
    qs = list(questions)
    attempts, _ = load_attempts(out)
    schema = attempt_schema()
    rows = [{name: a.get(name) for name in schema.names} for a in attempts]
    compact_to_parquet(out, out / "attempts.parquet", schema=schema, records=rows)
    compact_to_parquet(out, out / "traces.parquet", schema=schema, records=accepted(rows))
    table = yield_table(out, qs, generator)
    (out / "yield.json").write_text(json.dumps(table, indent=1))
    (out / "yield.md").write_text(format_table(table))
    log.info("wrote %d attempts, %d traces; yield table:\n%s", len(rows), table[-1]["correct"], format_table(table))
    return table
