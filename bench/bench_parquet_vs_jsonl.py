"""Benchmark: a 100k-trace table as Parquet (zstd) vs JSONL -- file size and read times.

Not a test. Builds a traces table shaped like the verify stage's output (id, dataset, domain,
answer, answer_type, response with a think block of ~`--chars` characters, numeric metadata),
writes it both ways and times:

- full read:   every column (Parquet: pq.read_table; JSONL: json.loads per line, and pyarrow's
               multithreaded C++ JSON reader);
- column read: the small columns a stats/report step needs (`id`, `dataset`, `reasoning_chars`),
               and the big `response` column alone. JSONL has no columns: it parses every line.

    .venv/bin/python bench/bench_parquet_vs_jsonl.py [--n 100000] [--chars 4000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

SYLLABLES = ["ta", "re", "mon", "ex", "ple", "ci", "ar", "do", "ven", "sol", "qui", "fer", "an", "th", "ing",
             "ed", "er", "co", "lo", "gi", "cal", "um", "ber", "is", "at", "on"]
DATASETS = [("aqua-rat", "math"), ("gsm8k", "math"), ("medmcqa", "medicine"), ("medqa", "medicine"),
            ("commonsenseqa", "commonsense"), ("arc-challenge", "science")]
SMALL = ["id", "dataset", "reasoning_chars"]


def make_table(n: int, chars: int, seed: int) -> pa.Table:
    """Rows cut from one big Zipf word stream at random offsets (fast; the stream is ~25x larger
    than a Parquet page, so rows sharing a page rarely share text zstd could exploit)."""
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(5000)})
    vocab += [str(rng.randint(0, 99999)) for _ in range(2000)]
    vocab += ["the", "so", "we", "is", "wait", "let", "me", "check", "answer", "\n\n", ".", ",", "=", "+"]
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))  # Zipf
    stream = rng.choices(vocab, cum_weights=cum, k=min(20_000_000, n * chars // 4))
    rows: dict[str, list[Any]] = {k: [] for k in ("id", "dataset", "domain", "answer", "answer_type", "response",
                                                  "reasoning_chars", "completion_tokens", "round", "correct")}
    for _ in range(n):
        dataset, domain = rng.choice(DATASETS)
        k = max(20, int(rng.lognormvariate(0, 0.5) * chars) // 5)
        start = rng.randrange(0, len(stream) - k)
        reasoning = " ".join(stream[start:start + k])
        answer = rng.choice("ABCD") if domain != "math" else str(rng.randint(0, 999))
        rows["id"].append(f"{dataset}/train/{rng.getrandbits(64):016x}")
        rows["dataset"].append(dataset)
        rows["domain"].append(domain)
        rows["answer"].append(answer)
        rows["answer_type"].append("letter" if domain != "math" else "numeric")
        rows["response"].append(f"<think>\n{reasoning}\n</think>\n\nThe answer is {answer}.")
        rows["reasoning_chars"].append(len(reasoning))
        rows["completion_tokens"].append(len(reasoning) // 4)
        rows["round"].append(rng.randint(1, 4))
        rows["correct"].append(True)
    return pa.table(rows)


def timed(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def jsonl_column(path: Path, columns: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {c: [] for c in columns}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            for c in columns:
                out[c].append(rec[c])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--chars", type=int, default=4000, help="median reasoning length in characters")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    a = ap.parse_args()

    t0 = time.perf_counter()
    table = make_table(a.n, a.chars, a.seed)
    print(f"table: {table.num_rows:,} rows, {table.nbytes / 1e6:,.0f} MB in memory, "
          f"built in {time.perf_counter() - t0:.1f}s; cpus {os.cpu_count()}")
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        pq_path, jl_path = Path(tmp) / "traces.parquet", Path(tmp) / "traces.jsonl"
        w_pq = timed(lambda: pq.write_table(table, pq_path, compression="zstd"), 1)

        def write_jsonl() -> None:
            with open(jl_path, "w", encoding="utf-8") as f:
                for rec in table.to_pylist():
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        w_jl = timed(write_jsonl, 1)
        jl_bytes = jl_path.read_bytes()
        zst = len(pa.Codec("zstd").compress(jl_bytes))
        del jl_bytes
        size_pq, size_jl = pq_path.stat().st_size, jl_path.stat().st_size
        print(f"\n{'file':<28}{'MB':>10}{'x parquet':>11}")
        print(f"{'parquet (zstd)':<28}{size_pq / 1e6:>10.1f}{1:>11.2f}")
        print(f"{'jsonl':<28}{size_jl / 1e6:>10.1f}{size_jl / size_pq:>11.2f}")
        print(f"{'jsonl.zst (whole file)':<28}{zst / 1e6:>10.1f}{zst / size_pq:>11.2f}")
        print(f"write: parquet {w_pq:.2f}s, jsonl {w_jl:.2f}s")

        r = a.repeats
        rows = [
            ("full read", timed(lambda: pq.read_table(pq_path), r),
             timed(lambda: jsonl_column(jl_path, table.column_names), r),
             timed(lambda: pajson.read_json(jl_path), r)),
            ("id,dataset,reasoning_chars", timed(lambda: pq.read_table(pq_path, columns=SMALL), r),
             timed(lambda: jsonl_column(jl_path, SMALL), r),
             timed(lambda: pajson.read_json(jl_path).select(SMALL), r)),
            ("response only", timed(lambda: pq.read_table(pq_path, columns=["response"]), r),
             timed(lambda: jsonl_column(jl_path, ["response"]), r),
             timed(lambda: pajson.read_json(jl_path).select(["response"]), r)),
        ]
        print(f"\n{'read (best of ' + str(r) + ')':<28}{'parquet s':>11}{'jsonl s':>10}{'x':>8}"
              f"{'pa.json s':>11}{'x':>8}")
        for name, p, j, pj in rows:
            print(f"{name:<28}{p:>11.3f}{j:>10.2f}{j / p:>8.1f}{pj:>11.2f}{pj / p:>8.1f}")


if __name__ == "__main__":
    main()
