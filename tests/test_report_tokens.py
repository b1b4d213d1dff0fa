"""Token lengths where the paper uses tokens: the compress stage keeps the compressor tokenizer's
raw and compressed reasoning lengths (Table 5's token column, Fig. 2), the evaluate stage counts
each record's reasoning with the student's tokenizer (median reasoning tokens, Table 9, Fig. 4)."""

from __future__ import annotations

import pyarrow as pa

from compress_distill.report.build import ReportInputs, build_data
from compress_distill.report.model import NA
from compress_distill.report.tables import table5
from compress_distill.stages.evaluate import _count_reasoning_tokens
from compress_distill.traces.compression import COMPRESSED_SCHEMA, assemble, with_compressed_tokens
from compress_distill.traces.tokenization import batch_lengths, load_tokenizer
from tests.conftest import REPO
from tests.tiny_tokenizer import bytelevel

RAW = "<think>\nFirst 2+3=5. Wait, re-check: 2+3 is 5. So 5.\n</think>\n\nThe answer is \\boxed{5}."


def rows() -> list[dict]:
    meta = {"dataset": "add", "domain": "Math", "teacher": "t", "compressor": "c"}
    return [assemble("a", RAW, "2+3=5.", finish_reason="stop", **meta),
            assemble("b", RAW, "", finish_reason="stop", **meta)]  # empty: not usable, no token counts


def test_compressed_rows_carry_raw_and_compressed_tokens_in_the_schema() -> None:
    tok = bytelevel()
    raw = "First 2+3=5. Wait, re-check: 2+3 is 5. So 5."
    out = with_compressed_tokens(rows(), tok, {"a": raw, "b": raw})
    assert out[0]["compressed_tokens"] == batch_lengths(tok, ["2+3=5."])[0]
    assert out[0]["raw_tokens"] == batch_lengths(tok, [raw])[0] > out[0]["compressed_tokens"]
    assert out[1]["compressed_tokens"] is None and out[1]["raw_tokens"] is None
    table = pa.Table.from_pylist(out, schema=COMPRESSED_SCHEMA)
    assert table.column("compressed_tokens").to_pylist() == [out[0]["compressed_tokens"], None]


def test_table5_token_column_filled_or_explained() -> None:
    filled = with_compressed_tokens(rows(), bytelevel())
    cells = [{"cell": "t.s.full.raw", "teacher": "t", "student": "s", "method": "full", "data": "raw"}]
    t = table5(build_data(ReportInputs(cells=cells, compression=filled)))
    col = t.columns.index("Comp. tok")
    assert all(r[col] != NA for r in t.rows) and not any("no token counts" in n for n in t.notes)
    old = table5(build_data(ReportInputs(cells=cells, compression=rows())))  # an artifact without counts
    assert all(r[col] == NA for r in old.rows) and any("no token counts" in n for n in old.notes)


def test_eval_records_count_reasoning_with_the_student_tokenizer() -> None:
    model_dir = next((REPO / "models" / "mini").glob("student-tiny-*"))
    records = [{"response": "<think>Ones digits 7 and 7.</think>The answer is 4.", "failed": False},
               {"response": "The answer is 4.", "failed": False},  # answer-only: no reasoning
               {"response": "", "failed": True}]
    _count_reasoning_tokens(records, model_dir)
    expect = batch_lengths(load_tokenizer(model_dir), ["Ones digits 7 and 7."])[0]
    assert [r["reasoning_tokens"] for r in records] == [expect, 0, 0] and expect > 0
