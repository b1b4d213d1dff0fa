"""Benchmark: the contamination check at the paper's scale (issue 19, item 2).

Not a test. Builds a deterministic synthetic corpus: `--train` training questions (default 283,000,
the paper's pool) of 40-120 words drawn from a Zipf-distributed 30k-word vocabulary, a third of them
ending in one of a few benchmark boilerplate sentences (template text, which must not be flagged),
and `--eval` evaluation questions (default 5,000) into which it plants `--planted` exact duplicates
of training questions (case, whitespace and punctuation changed) and as many near-duplicates (a long
span kept, 3 words changed). It then runs `decontaminate` and `write_report`, the functions the
prepare stage calls, and reports seconds, peak memory (max RSS) and whether exactly the planted
training questions were flagged, with exact and n-gram matches told apart.

    .venv/bin/python bench/bench_contamination.py [--train 283000] [--eval 5000] [--planted 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compress_distill.config import ContaminationSpec
from compress_distill.datasets.contamination import TEMPLATE_NGRAM, decontaminate, write_report

TEMPLATES = [
    "Which of the following is the most likely cause of this patient's symptoms?",
    "Which of the following is the most appropriate next step in management?",
    "How many dollars does she have left at the end of the week in total?",
]


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since start or since `_reset_peak`) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: peak since start


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so that the peak measures the check alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _questions(rng: np.random.Generator, vocab: np.ndarray, p: np.ndarray, n: int) -> list[str]:
    lens = rng.integers(40, 121, size=n)
    words = vocab[rng.choice(len(vocab), size=int(lens.sum()), p=p)]
    out, at = [], 0
    for i, k in enumerate(lens.tolist()):
        text = " ".join(words[at:at + k].tolist())
        at += k
        if i % 3 == 0:  # a third carry a benchmark's boilerplate sentence
            text = f"{text}. {TEMPLATES[i % len(TEMPLATES)]}"
        out.append(text)
    return out


def _exact_variant(text: str, rng: np.random.Generator) -> str:
    """Same question after normalisation: case, spacing and punctuation changed."""
    words = text.split()
    words = [w.upper() if rng.random() < 0.2 else w for w in words]
    return "  " + ",  ".join(" ".join(words[i:i + 7]) for i in range(0, len(words), 7)) + " ?! "


def _near_variant(text: str, rng: np.random.Generator, n: int) -> tuple[str, str]:
    """3 words of the question's body changed, at random places, and whether the copy must be found:
    `findable` when an unchanged run of `n` body tokens remains away from the boilerplate (whose
    8-grams, and so the body words next to it, may be template text), `none` when no unchanged run of
    `n` tokens remains at all, `borderline` otherwise."""
    body, dot, tail = text.partition(". ")
    words = body.split()
    changed = sorted(rng.choice(len(words), size=3, replace=False).tolist())
    for pos in changed:
        words[pos] = f"changed{pos}"
    runs = list(zip([0, *(c + 1 for c in changed)], [*changed, len(words)], strict=True))
    margin = TEMPLATE_NGRAM - 1 if tail else 0
    if any(b - a - (margin if b == len(words) else 0) >= n for a, b in runs):
        kind = "findable"
    elif any(b - a >= n for a, b in runs):
        kind = "borderline"
    else:
        kind = "none"
    return " ".join(words) + dot + tail, kind


def _check(folder: Path) -> None:
    """The measured part, in its own process: read the two question tables (as the prepare stage
    reads the suite), run the check, write the report; print what the parent needs as JSON."""
    train = pq.read_table(folder / "train.parquet").to_pylist()
    evals = pq.read_table(folder / "eval.parquet").to_pylist()
    loaded, peak_before = _status_mb("VmRSS"), _status_mb("VmHWM")
    reset = _reset_peak()
    spec = ContaminationSpec()
    t0, c0 = time.perf_counter(), time.process_time()
    kept, removed, report = decontaminate(train, evals, spec)
    summary = write_report(report, train, spec, folder)
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "rss_loaded": loaded,
                      "rss_peak": _status_mb("VmHWM"), "peak_reset": reset, "peak_reading": peak_before, "summary": summary, "kept": len(kept), "removed": len(removed),
                      "kinds": {p.train_id: p.kind for p in report.pairs}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=283_000)
    ap.add_argument("--eval", type=int, default=5_000)
    ap.add_argument("--planted", type=int, default=200, help="exact duplicates planted, and as many near-duplicates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", help=argparse.SUPPRESS)  # the measured child process: its folder
    args = ap.parse_args()
    if args.check:
        _check(Path(args.check))
        return
    rng = np.random.default_rng(args.seed)
    vocab = np.array([f"w{i}" for i in range(30_000)])
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    p /= p.sum()

    t0 = time.perf_counter()
    train_text = _questions(rng, vocab, p, args.train)
    eval_text = _questions(rng, vocab, p, args.eval)
    src = rng.choice(args.train, size=2 * args.planted, replace=False).tolist()
    exact_src, near_src = src[:args.planted], src[args.planted:]
    slots = rng.choice(args.eval, size=2 * args.planted, replace=False).tolist()
    for s, e in zip(exact_src, slots[:args.planted], strict=True):
        eval_text[e] = _exact_variant(train_text[s], rng)
    spec = ContaminationSpec()
    near_kind: dict[str, str] = {}
    for s, e in zip(near_src, slots[args.planted:], strict=True):
        eval_text[e], near_kind[f"train/{s}"] = _near_variant(train_text[s], rng, spec.ngram)
    train = [{"id": f"train/{i}", "dataset": f"d{i % 12}", "split": "train", "question": q, "choices": None}
             for i, q in enumerate(train_text)]
    evals = [{"id": f"eval/{j}", "dataset": f"e{j % 20}", "split": "test", "question": q, "choices": None}
             for j, q in enumerate(eval_text)]
    words = sum(len(q.split()) for q in train_text)
    print(f"corpus: {args.train:,} training questions ({words / args.train:.0f} words each on average), "
          f"{args.eval:,} evaluation questions, {args.planted} exact + {args.planted} near duplicates planted; "
          f"built in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pq.write_table(pa.Table.from_pylist(train), folder / "train.parquet")
        pq.write_table(pa.Table.from_pylist(evals), folder / "eval.parquet")
        del train, evals, train_text, eval_text
        out = subprocess.run([sys.executable, __file__, "--check", tmp], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    summary, kinds = r["summary"], r["kinds"]
    print(f"check: {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU (one process); peak RSS during the check "
          f"{r['rss_peak']:.0f} MB{'' if r['peak_reset'] else ' (peak since start: no /proc reset)'}, "
          f"{r['rss_loaded']:.0f} MB before it with both tables read as Python rows "
          f"(reading peaked at {r['peak_reading']:.0f} MB)")
    print(f"pairs: {summary['pairs']} {summary['pairs_by_kind']}; flagged {summary['train_flagged']}, "
          f"quarantined {r['removed']}, kept {r['kept']:,}; template 8-grams set aside: {summary['template_ngrams']}")
    want = {f"train/{i}": "exact" for i in exact_src} | {t: "ngram" for t, k in near_kind.items() if k == "findable"}
    other = {t: k for t, k in near_kind.items() if k != "findable"}
    missed = sorted(set(want) - set(kinds))
    extra = sorted(set(kinds) - set(want) - set(other))
    wrong_kind = sorted(k for k in set(want) & set(kinds) if kinds[k] != want[k])
    ok = not missed and not extra and not wrong_kind
    by = {k: [t for t, v in other.items() if v == k] for k in ("borderline", "none")}
    print(f"planted: exact {sum(kinds.get(f'train/{i}') == 'exact' for i in exact_src)}/{args.planted} found; "
          f"near-duplicates with an unchanged {spec.ngram}-token run clear of the boilerplate "
          f"{sum(kinds.get(t) == 'ngram' for t, k in near_kind.items() if k == 'findable')}/"
          f"{sum(k == 'findable' for k in near_kind.values())} found; next to the boilerplate "
          f"{sum(t in kinds for t in by['borderline'])}/{len(by['borderline'])} found; with no such run "
          f"{sum(t in kinds for t in by['none'])}/{len(by['none'])} found; unplanted flagged {len(extra)}, "
          f"wrong kind {len(wrong_kind)} -> {'OK' if ok else 'FAIL'}")
    if not ok:
        raise SystemExit(f"missed {missed[:5]}, extra {extra[:5]}, wrong kind {wrong_kind[:5]}")

if __name__ == "__main__":
    main()
