"""The paper's metrics on hand-computed cases: SE, Acc/1k, truncation, medians, empty groups, ratios, rho."""

from __future__ import annotations

import math

import pytest

from compress_distill.report.metrics import (
    OVERALL,
    EvalMetrics,
    acc_per_1k_tokens,
    binomial_se,
    compression_stats,
    eval_metrics,
    ratios_vs_raw,
    rho,
)


def rec(i: int, group: str, correct: bool, tokens: int, truncated: bool = False, chars: int = 0,
        rtoks: int | None = None) -> dict:
    return {"id": f"q{i}", "dataset": group.lower(), "group": group, "correct": correct, "truncated": truncated,
            "completion_tokens": tokens, "reasoning_chars": chars, "reasoning_tokens": rtoks}


def test_binomial_se_by_hand() -> None:
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.528, 10_000) == pytest.approx(math.sqrt(0.528 * 0.472 / 10_000))  # ~0.005, Table 7
    assert binomial_se(1.0, 7) == 0.0
    assert binomial_se(None, 5) is None and binomial_se(0.5, 0) is None


def test_acc_per_1k_reproduces_paper_table9_example() -> None:
    # Table 9: Qwen3.5-0.8B raw LoRA, 0.528 overall accuracy at 2,954 avg completion tokens -> 0.1787
    assert acc_per_1k_tokens(0.528, 2954) == pytest.approx(0.1787, abs=5e-5)
    assert acc_per_1k_tokens(0.5, 0) is None and acc_per_1k_tokens(None, 100) is None


def test_eval_metrics_hand_computed() -> None:
    records = [
        rec(1, "Math", True, 100, chars=300, rtoks=80),
        rec(2, "Math", False, 160, truncated=True, chars=900, rtoks=150),
        rec(3, "Math", True, 60, chars=100, rtoks=40),
        rec(4, "Science", False, 40, chars=200, rtoks=None),
    ]
    m = eval_metrics(records, groups=["Math", "Science", "Medicine"])
    assert (m.n, m.correct) == (4, 2)
    assert m.accuracy == 0.5 and m.accuracy_se == pytest.approx(0.25)  # sqrt(.25/4)
    assert m.avg_completion_tokens == pytest.approx(90.0)  # (100+160+60+40)/4
    assert m.avg_completion_tokens_excl_truncated == pytest.approx(200 / 3)
    assert m.truncation_rate == 0.25
    assert m.median_reasoning_chars == 250.0  # median of 100, 200, 300, 900
    assert m.median_reasoning_tokens == 80.0  # over the three records that have tokens
    assert m.acc_per_1k_tokens == pytest.approx(0.5 / 0.09)
    math_g = m.group("Math")
    assert math_g is not None and math_g.accuracy == pytest.approx(2 / 3)
    assert math_g.se == pytest.approx(math.sqrt((2 / 3) * (1 / 3) / 3))
    # Overall accuracy is over all records, not the mean of group accuracies (2/3 and 0 -> 1/3).
    assert m.accuracy != pytest.approx(((2 / 3) + 0) / 2)


def test_empty_group_and_empty_input_are_none_not_nan() -> None:
    m = eval_metrics([rec(1, "Math", True, 10)], groups=["Math", "Medicine"])
    med = m.group("Medicine")
    assert med is not None and (med.n, med.accuracy, med.se) == (0, None, None)
    assert [g.group for g in m.groups] == ["Math", "Medicine"]
    assert m.median_reasoning_tokens is None
    empty = eval_metrics([], groups=["Math"])
    row = empty.to_row()
    assert empty.accuracy is None and empty.acc_per_1k_tokens is None and empty.truncation_rate is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in row.values())
    # All records truncated: the "excluding truncated" mean is undefined, not 0 or NaN.
    assert eval_metrics([rec(1, "Math", False, 160, truncated=True)]).avg_completion_tokens_excl_truncated is None


def test_groups_not_listed_follow_sorted_and_row_round_trips() -> None:
    m = eval_metrics([rec(1, "Zeta", True, 5), rec(2, "Alpha", False, 5), rec(3, "Math", True, 5)], groups=["Math"])
    assert [g.group for g in m.groups] == ["Math", "Alpha", "Zeta"]
    row = m.to_row()
    assert row["acc:Math"] == 1.0 and row["n:Alpha"] == 1 and row["se:Zeta"] == 0.0
    # pandas/Parquet round trips turn missing values into NaN, also in the integer counts
    back = EvalMetrics.from_row({**row, "cell": "x", "acc:Alpha": float("nan"), "n:Alpha": float("nan")})
    assert back.group("Alpha") is not None and back.group("Alpha").accuracy is None  # type: ignore[union-attr]
    assert back.accuracy == m.accuracy and [g.group for g in back.groups] == ["Math", "Alpha", "Zeta"]


def test_failed_requests_count_as_wrong_but_are_not_measured() -> None:
    failed = {**rec(9, "Math", False, 0), "failed": True, "response": ""}
    m = eval_metrics([rec(1, "Math", True, 100, chars=300), rec(2, "Science", False, 60, truncated=True, chars=100),
                      failed], groups=["Math", "Science"])
    assert (m.n, m.correct, m.failed) == (3, 1, 1)
    assert m.accuracy == pytest.approx(1 / 3)  # over every question: a lost answer is not a free pass
    assert m.group("Math").n == 2 and m.group("Math").accuracy == 0.5  # type: ignore[union-attr]
    assert m.avg_completion_tokens == 80.0 and m.truncation_rate == 0.5  # over the two answered
    assert m.median_reasoning_chars == 200.0
    row = m.to_row()
    assert row["failed"] == 1 and EvalMetrics.from_row(row).failed == 1
    assert EvalMetrics.from_row({k: v for k, v in row.items() if k != "failed"}).failed == 0  # older metrics.json
    assert eval_metrics([rec(1, "Math", True, 10)]).failed == 0  # records without the column
    # a failed record is never counted correct, whatever its `correct` says
    assert eval_metrics([{**failed, "correct": True}]).correct == 0


def test_ratios_vs_raw_like_table6() -> None:
    # Table 6, Qwen teacher, Qwen3.5-0.8B LoRA: raw 635M tokens, Llama-70B 102M; times from GPU-h / 4 GPUs.
    rows = [
        {"teacher": "q", "student": "s", "method": "lora", "data": "raw", "train_seconds": 4.5 / 4 * 3600,
         "trainable_tokens": 635e6},
        {"teacher": "q", "student": "s", "method": "lora", "data": "llama70b", "data_kind": "compressed",
         "train_seconds": 0.8 / 4 * 3600, "trainable_tokens": 102e6},
        {"teacher": "q", "student": "s", "method": "full", "data": "llama70b", "data_kind": "compressed",
         "train_seconds": 10.0, "trainable_tokens": 1.0},  # no raw cell for this method
        {"teacher": "q", "student": "s", "method": "lora", "data": "broken", "data_kind": "compressed",
         "train_seconds": 0.0, "trainable_tokens": None},
    ]
    out = {(r.method, r.data): r for r in ratios_vs_raw(rows)}
    assert out[("lora", "raw")].token_ratio == 1.0 and out[("lora", "raw")].speedup == 1.0
    comp = out[("lora", "llama70b")]
    assert comp.token_ratio == pytest.approx(102 / 635) and comp.speedup == pytest.approx(4.5 / 0.8)
    assert comp.raw_data == "raw"
    orphan = out[("full", "llama70b")]
    assert orphan.raw_data is None and orphan.token_ratio is None and orphan.speedup is None
    broken = out[("lora", "broken")]
    assert broken.speedup is None and broken.token_ratio is None  # zero seconds / missing tokens -> None


def test_compression_stats_per_dataset_and_overall() -> None:
    rows = [
        {"teacher": "t", "compressor": "c", "dataset": "a", "domain": "math", "raw_chars": 100,
         "compressed_chars": 10, "compressed_tokens": 4},
        {"teacher": "t", "compressor": "c", "dataset": "a", "domain": "math", "raw_chars": 300,
         "compressed_chars": 90, "compressed_tokens": 20},
        {"teacher": "t", "compressor": "c", "dataset": "b", "domain": "sci", "raw_chars": 200,
         "compressed_chars": 100},
        {"teacher": "t", "compressor": "c", "dataset": "b", "domain": "sci", "raw_chars": 0,
         "compressed_chars": 5},  # rho undefined: excluded
        {"teacher": "t", "compressor": "c", "dataset": "b", "domain": "sci", "raw_chars": 50,
         "compressed_chars": 0, "usable": False},  # empty compression: not training data
    ]
    stats = {s.dataset: s for s in compression_stats(rows)}
    a, b, overall = stats["a"], stats["b"], stats[OVERALL]
    assert a.mean_raw_chars == 200 and a.mean_compressed_chars == 50
    assert a.mean_rho == pytest.approx((0.1 + 0.3) / 2)  # mean of per-example ratios, not 100/400
    assert a.mean_compressed_tokens == 12 and a.domain == "math"
    assert b.n == 1 and b.n_rows == 3 and b.mean_rho == 0.5 and b.mean_compressed_tokens is None
    assert overall.n == 3 and overall.n_rows == 5 and overall.mean_rho == pytest.approx((0.1 + 0.3 + 0.5) / 3) and overall.domain is None
    assert list(stats) == ["a", "b", OVERALL]
    assert rho(0, 10) is None and rho(200, 50) == 0.25
