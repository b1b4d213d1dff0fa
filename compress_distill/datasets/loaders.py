"""Loading benchmark rows into the normalized schema, and the `prepare` step that writes them.

A `DatasetSpec.source` is one of:
- a local file (`.parquet`, `.jsonl`, `.json`; `{split}` in the path is replaced by the split
  name; a file with a `split` column is filtered to the requested split). Rows are in the
  dataset's native format and go through the same normalizer as hub rows; rows that already
  have the normalized shape (`id` + `answer_type`) pass through unchanged.
- `synthetic:<domain>`: the mini world (`compress_distill.miniworld.world.generate_questions`).
- anything else: a Hugging Face dataset id, loaded with `datasets.load_dataset(source, subset,
  split=...)`; MMLU groups load one config per subject.

`limit` keeps the first `limit` native rows (source order; MMLU subjects in list order), before
validation, so quarantined rows count towards it. Ids are recomputed from content for every
source except pass-through rows (see `schema.make_id`).
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from ..config import ContaminationSpec, DatasetSpec
from ..store import write_parquet
from .contamination import REASON, decontaminate, write_report
from .registry import DatasetEntry, lookup, mmlu_subjects, norm_generic
from .schema import (
    QUARANTINE_SCHEMA,
    QUESTION_SCHEMA,
    REJECT_DETAIL_KEY,
    REJECT_KEY,
    RowError,
    canonical_answer,
    make_id,
    reason_counts,
    validate_rows,
)

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")
SYNTHETIC = "synthetic:"


class DatasetLoadError(RuntimeError):
    """A dataset that could not be loaded at all (as opposed to bad rows, which are quarantined)."""


def is_local(source: str) -> bool:
    return source.lower().endswith(LOCAL_SUFFIXES)


# --------------------------------------------------------------------------- native rows

def _read_local(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DatasetLoadError(f"local dataset file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    content = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(content)
        except json.JSONDecodeError:
            data = None  # a .json file holding JSON lines
        if isinstance(data, list):
            return data
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            return list(data["data"])
    rows = []
    for n, line in enumerate(content.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetLoadError(f"{path}:{n}: invalid JSON line: {err.msg}") from None
    return rows


def _local_rows(source: str, split: str) -> list[dict[str, Any]]:
    path = Path(source.replace("{split}", split)).expanduser()
    rows = _read_local(path)
    if "{split}" not in source and rows and all("split" in r for r in rows):
        rows = [r for r in rows if r.get("split") == split]
    return rows


def _synthetic_rows(name: str, spec: DatasetSpec, split: str, seed: int) -> list[dict[str, Any]]:
    domain = spec.source[len(SYNTHETIC):]
    try:
        world = importlib.import_module("compress_distill.miniworld.world")
    except ImportError as err:
        raise DatasetLoadError(f"dataset {name}: source {spec.source!r} needs compress_distill.miniworld "
                               f"(the mini world), which cannot be imported: {err}") from err
    limit = spec.limit_for(split)
    n = limit if limit is not None else world.pool_size(domain, split)
    return [dict(q) for q in world.generate_questions(domain, split, n, seed)]


def _hf_rows(name: str, spec: DatasetSpec, split: str, entry: DatasetEntry | None) -> Iterator[dict[str, Any]]:
    try:
        hf = importlib.import_module("datasets")  # the Hugging Face library, not this package
    except ImportError as err:
        raise DatasetLoadError(f"dataset {name}: loading {spec.source!r} from the Hugging Face hub needs the "
                               "`datasets` package (pip install 'datasets>=3')") from err
    subsets: tuple[str | None, ...] = (spec.subset,)
    if spec.source.lower() == "cais/mmlu":
        subsets = mmlu_subjects(spec.subset)
    for subset in subsets:
        try:
            ds = hf.load_dataset(spec.source, subset, split=split)
        except Exception as err:  # network, auth, unknown split: not a row problem, so stop loudly
            raise DatasetLoadError(f"dataset {name}: load_dataset({spec.source!r}, {subset!r}, split={split!r}) "
                                   f"failed: {type(err).__name__}: {err}") from err
        yield from ds


def native_rows(name: str, spec: DatasetSpec, split: str, seed: int = 0) -> list[dict[str, Any]]:
    """The rows of one split in the source's own format, `limit` (or `eval_limit`) applied."""
    if spec.source.startswith(SYNTHETIC):
        return _synthetic_rows(name, spec, split, seed)  # `limit` is the sample size there
    if is_local(spec.source):
        rows: Iterable[dict[str, Any]] = _local_rows(spec.source, split)
    else:
        rows = _hf_rows(name, spec, split, lookup(name, spec.source, spec.subset))
    out: list[dict[str, Any]] = []
    limit = spec.limit_for(split)
    for row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(dict(row))
    return out


# --------------------------------------------------------------------------- normalization

def _is_normalized(row: Mapping[str, Any]) -> bool:
    return "id" in row and "answer_type" in row and "question" in row and "answer" in row


def normalize_row(row: Mapping[str, Any], name: str, spec: DatasetSpec, split: str,
                  entry: DatasetEntry | None) -> dict[str, Any]:
    """One schema row; a row that cannot be normalized carries REJECT_KEY instead of failing."""
    base = {"dataset": name, "domain": spec.domain, "answer_type": spec.answer_type, "split": split}
    if _is_normalized(row):
        # Our own schema (an exported questions file, or the mini world): keep the text, re-key
        # the row to this config's dataset name unless it brings its own stable id.
        choices = list(row["choices"]) if row.get("choices") is not None else None
        out = {**base, "question": row["question"], "choices": choices, "answer": row["answer"]}
        out["id"] = row["id"] if not spec.source.startswith(SYNTHETIC) else None
        if row.get("answer_type") != spec.answer_type:
            out.update({REJECT_KEY: "bad_answer_type",
                        REJECT_DETAIL_KEY: f"row says {row.get('answer_type')!r}, config says {spec.answer_type!r}"})
    else:
        normalize = entry.normalize if entry is not None else norm_generic
        try:
            question, choices, raw_answer = normalize(row)
            out = {**base, "question": question, "choices": choices,
                   "answer": canonical_answer(raw_answer, spec.answer_type), "id": None}
        except RowError as err:
            return {**base, "id": None, "question": row.get("question"), "choices": None, "answer": None,
                    REJECT_KEY: err.reason, REJECT_DETAIL_KEY: err.detail, "native": dict(row)}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            return {**base, "id": None, "question": row.get("question"), "choices": None, "answer": None,
                    REJECT_KEY: "malformed_row", REJECT_DETAIL_KEY: f"{type(err).__name__}: {err}",
                    "native": dict(row)}
    if out["id"] is None and isinstance(out.get("question"), str) and isinstance(out.get("answer"), str):
        out["id"] = make_id(name, split, out["question"], out["choices"], out["answer"])
    return out


def load_dataset_rows(name: str, spec: DatasetSpec, split: str, seed: int = 0) -> list[dict[str, Any]]:
    """Normalized rows of one dataset split. Not yet validated: pass them to `validate_rows`.

    Rows the normalizer rejected are included, marked with `schema.REJECT_KEY`, so that the
    caller can quarantine and count them.
    """
    entry = lookup(name, spec.source, spec.subset)
    if entry is not None and entry.answer_type != spec.answer_type and not spec.source.startswith(SYNTHETIC):
        raise DatasetLoadError(f"dataset {name}: config answer_type {spec.answer_type!r} but the registry's "
                               f"{entry.name} normalizer produces {entry.answer_type!r}")
    rows = [normalize_row(r, name, spec, split, entry) for r in native_rows(name, spec, split, seed)]
    log.info("dataset %s/%s: %d rows from %s", name, split, len(rows), spec.source)
    return rows


# --------------------------------------------------------------------------- prepare step

def prepare_questions(datasets: Mapping[str, DatasetSpec | Mapping[str, Any]], split_kind: Literal["train", "eval"],
                      out_dir: str | Path, seed: int = 0, eval_questions: Sequence[Mapping[str, Any]] | None = None,
                      contamination: ContaminationSpec | None = None) -> dict[str, Any]:
    """Write `questions.parquet`, `quarantine.parquet` and `counts.json` for one split kind.

    `datasets` maps names to DatasetSpec (or their dumps, as a plan node's params hold them).
    Datasets without a split of this kind are listed under `skipped`. Returns the counts.
    With `eval_questions` and `contamination` (the train pool), the good rows are checked against
    the evaluation questions: `contamination.parquet` and `.json` list the pairs, and with
    `quarantine` on the flagged rows move to the quarantine table (reason `contaminated`).
    """
    if (eval_questions is None) != (contamination is None):
        raise ValueError("prepare_questions: eval_questions and contamination go together")
    if split_kind not in ("train", "eval"):
        raise ValueError(f"split_kind must be 'train' or 'eval', not {split_kind!r}")
    specs = {k: v if isinstance(v, DatasetSpec) else DatasetSpec.model_validate(v) for k, v in datasets.items()}
    out = Path(out_dir)
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    per: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    seen: set[str] = set()
    for name in sorted(specs):
        spec = specs[name]
        split = spec.train_split if split_kind == "train" else spec.eval_split
        if split is None:
            skipped.append(name)
            continue
        entry = lookup(name, spec.source, spec.subset)
        rows = load_dataset_rows(name, spec, split, seed)
        ok, rejected = validate_rows(rows, {name: entry.choice_range} if entry and entry.choice_range else None)
        for row in ok:  # ids are dataset-prefixed, but a pass-through file could reuse another's ids
            if row["id"] in seen:
                rejected.append({"dataset": name, "split": split, "id": row["id"], "reason": "duplicate_id",
                                 "detail": "id already used by another dataset",
                                 "row": json.dumps(row, ensure_ascii=False, sort_keys=True)})
            else:
                seen.add(row["id"])
                good.append(row)
        bad.extend(rejected)
        kept = len(rows) - len(rejected)
        per[name] = {"split": split, "source": spec.source, "loaded": len(rows), "good": kept,
                     "quarantined": len(rejected), "reasons": reason_counts(rejected)}
        if entry is not None and entry.paper_sizes and spec.limit_for(split) is None:
            expected = entry.paper_sizes[0 if split_kind == "train" else 1]
            per[name]["paper_count"] = expected
        if rejected:
            log.warning("dataset %s/%s: %d of %d rows quarantined %s", name, split, len(rejected), len(rows),
                        per[name]["reasons"])
    summary = None
    if contamination is not None and eval_questions is not None:
        t0 = time.perf_counter()
        checked = good
        good, removed, report = decontaminate(checked, eval_questions, contamination)
        bad.extend(removed)
        summary = write_report(report, checked, contamination, out)
        for name in per:
            c = summary["datasets"].get(name, {})
            per[name]["contaminated"] = c.get("train_flagged", 0)  # flagged, removed or not
            if c.get("train_quarantined"):
                per[name]["good"] -= c["train_quarantined"]
                per[name]["quarantined"] += c["train_quarantined"]
                per[name]["reasons"] = dict(sorted({**per[name]["reasons"], REASON: c["train_quarantined"]}.items()))
        log.info("contamination: %d pair(s), %d training question(s) flagged, %d removed (%.1f s)",
                 summary["pairs"], summary["train_flagged"], summary["train_quarantined"], time.perf_counter() - t0)
    write_parquet(good, out / "questions.parquet", schema=QUESTION_SCHEMA)
    write_parquet(bad, out / "quarantine.parquet", schema=QUARANTINE_SCHEMA)
    stats = {"split_kind": split_kind, "questions": len(good), "quarantined": len(bad),
             "reasons": reason_counts(bad), "datasets": per, "skipped": skipped}
    if summary is not None:
        stats["contamination"] = {k: summary[k] for k in ("pairs", "pairs_by_kind", "train_flagged",
                                                          "train_quarantined", "ngram", "quarantine")}
    tmp = out / ".counts.json.tmp"
    tmp.write_text(json.dumps(stats, indent=1, sort_keys=True))
    tmp.replace(out / "counts.json")
    return stats
