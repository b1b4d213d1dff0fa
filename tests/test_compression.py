"""Compression helpers: prompt slots, per-domain prompts, assembly with the answer re-attached, rho, Table 5."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from compress_distill.config import CompressorSpec, SamplingSpec, ServeSpec
from compress_distill.report.metrics import OVERALL, compression_stats
from compress_distill.traces.compression import (
    COMPRESSED_SCHEMA,
    assemble,
    char_ratio,
    clean_output,
    compression_prompt,
    render_prompt,
    split_response,
    with_compressed_tokens,
)
from tests.tiny_tokenizer import bytelevel

RAW = "<think>\nFirst 2+3=5. Wait, re-check: 2+3 is 5. So 5.\n</think>\n\nThe answer is \\boxed{5}."


def spec(**kw: object) -> CompressorSpec:
    return CompressorSpec(model="m", label="M", serve=ServeSpec(), sampling=SamplingSpec(
        temperature=0.3, max_tokens=64, batch_size=4), prompt="Shorten.\nQ: {question}\nR: {trace}", **kw)


def test_prompt_fills_slots_once_and_leaves_braces_alone() -> None:
    out = compression_prompt(spec(), "Is {x} in {trace}?", "use {question} and \\frac{1}{2}")
    assert out == "Shorten.\nQ: Is {x} in {trace}?\nR: use {question} and \\frac{1}{2}"
    assert render_prompt("{trace}|{trace}", "q", "t") == "t|t"


def test_domain_prompt_overrides_the_generic_one() -> None:
    s = spec(domain_prompts={"medicine": "Keep every drug and dose. {question} // {trace}"})
    assert compression_prompt(s, "q", "t", domain="medicine") == "Keep every drug and dose. q // t"
    assert compression_prompt(s, "q", "t", domain="math").startswith("Shorten.")
    assert compression_prompt(s, "q", "t").startswith("Shorten.")


def test_split_response_keeps_the_tail_verbatim() -> None:
    parts = split_response(RAW)
    assert parts is not None
    assert parts.reasoning == "First 2+3=5. Wait, re-check: 2+3 is 5. So 5."
    assert parts.tail == "\n\nThe answer is \\boxed{5}."
    assert split_response("no think block") is None
    assert split_response("reasoning only</think>A").reasoning == "reasoning only"  # template opened <think>


def test_assemble_reattaches_the_final_answer_unchanged() -> None:
    row = assemble("q1", RAW, "  2+3=5.  ", dataset="gsm8k", domain="math", teacher="t", compressor="c",
                   finish_reason="stop")
    assert row["response"] == "<think>2+3=5.</think>\n\nThe answer is \\boxed{5}."
    assert row["reasoning"] == "2+3=5."
    assert row["raw_chars"] == len("First 2+3=5. Wait, re-check: 2+3 is 5. So 5.")
    assert row["rho"] == pytest.approx(6 / row["raw_chars"])
    assert row["status"] == "ok" and row["usable"]
    assert set(row) == set(COMPRESSED_SCHEMA.names)
    pa.Table.from_pylist([row], schema=COMPRESSED_SCHEMA)  # fits the schema


def test_compressor_think_tags_are_removed() -> None:
    assert clean_output("<think>let me shorten</think> 2+3=5.") == "2+3=5."
    assert clean_output("2+3=5. </think>") == ""  # everything was inside a think block
    assert clean_output("a <think> b") == "a  b"
    assert clean_output(None) == ""


@pytest.mark.parametrize(("output", "finish", "status", "usable"), [
    ("", "stop", "empty", False),
    ("   ", "stop", "empty", False),
    ("x" * 500, "stop", "longer", True),
    ("2+3=5", "length", "truncated", True),
])
def test_edge_case_statuses(output: str, finish: str, status: str, usable: bool) -> None:
    row = assemble("q", RAW, output, finish_reason=finish)
    assert (row["status"], row["usable"]) == (status, usable)
    if status == "empty":
        assert row["rho"] == 0.0
    if status == "longer":
        assert row["rho"] > 1


def test_empty_original_has_undefined_rho() -> None:
    row = assemble("q", "<think></think>The answer is 5.", "short")
    assert row["status"] == "empty_original" and row["rho"] is None and not row["usable"]
    assert char_ratio("", "") is None


def test_unverified_raw_response_is_rejected() -> None:
    with pytest.raises(ValueError, match="no </think>"):
        assemble("q", "<think>never closed", "x")


def test_empty_raw_tail_falls_back_to_the_canonical_answer() -> None:
    row = assemble("q", "<think>r</think>", "s", canonical_answer="5")
    assert row["response"] == "<think>s</think>\n\nThe answer is 5."


def test_table5_stats() -> None:
    def r(dataset: str, raw: str, comp: str, finish: str = "stop") -> dict[str, object]:
        return assemble(f"{dataset}-{raw}-{comp}", f"<think>{raw}</think>A", comp, finish_reason=finish,
                        dataset=dataset, teacher="qwen", compressor="llama")
    rows = [r("gsm8k", "a" * 100, "b" * 10), r("gsm8k", "a" * 300, "b" * 60), r("gsm8k", "a" * 10, ""),
            r("medqa", "a" * 50, "b" * 100), r("medqa", "a" * 50, "b" * 5, "length")]
    stats = [s.to_row() for s in compression_stats(with_compressed_tokens(rows, bytelevel()))]
    by = {s["dataset"]: s for s in stats}
    assert [s["dataset"] for s in stats] == ["gsm8k", "medqa", OVERALL]
    g = by["gsm8k"]
    assert (g["n_rows"], g["n"], g["n_empty"]) == (3, 2, 1)  # means over the usable rows
    assert g["mean_raw_chars"] == 200 and g["mean_compressed_chars"] == 35
    assert g["mean_rho"] == pytest.approx((0.1 + 0.2) / 2)
    assert g["ratio_of_means"] == pytest.approx(35 / 200)
    assert g["mean_compressed_tokens"] is not None and g["mean_compressed_tokens"] > 0
    m = by["medqa"]
    assert (m["n_longer"], m["n_truncated"]) == (1, 1)
    o = by[OVERALL]
    assert o["n_rows"] == 5 and o["n"] == 4
    assert o["mean_rho"] == pytest.approx((0.1 + 0.2 + 2.0 + 0.1) / 4)
    assert compression_stats(rows)[0].mean_compressed_tokens is None
    assert not math.isnan(o["ratio_of_means"])


def test_compression_inputs_render_choices_and_pick_the_domain_prompt() -> None:
    from compress_distill.traces.compression import compression_inputs

    s = spec(domain_prompts={"medicine": "MED {question} | {trace}"})
    questions = [{"id": "a", "question": "Dose?", "choices": ["1 mg", "2 mg"], "domain": "medicine"},
                 {"id": "b", "question": "2+3?", "choices": None, "domain": "math"}]
    traces = [{"id": "a", "response": "<think>check the dose</think>B", "domain": "medicine"},
              {"id": "b", "response": RAW},
              {"id": "c", "response": RAW},  # no question
              {"id": "b", "response": "<think>never closed"}]
    reqs, stats = compression_inputs(s, traces, questions)
    assert reqs[0] == {"id": "a", "domain": "medicine", "prompt": "MED Dose?\n\nA) 1 mg\nB) 2 mg | check the dose"}
    assert reqs[1]["prompt"].startswith("Shorten.\nQ: 2+3?\nR: First 2+3=5.")
    assert stats == {"traces": 4, "requests": 2, "missing_question": 1, "no_think": 1}
