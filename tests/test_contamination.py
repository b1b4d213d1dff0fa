"""The contamination check (datasets/contamination.py) and its place in the prepare stage and the plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from compress_distill.config import ConfigError, ContaminationSpec, DatasetSpec, load_config, parse_config
from compress_distill.datasets.contamination import (
    PAIRS_FILE,
    REPORT_FILE,
    contamination_counts,
    decontaminate,
    find_contamination,
    tokens,
)
from compress_distill.datasets.loaders import prepare_questions
from compress_distill.miniworld import world
from compress_distill.plan import build_plan
from compress_distill.stages import StageContext
from compress_distill.stages.prepare import run as prepare_run

REPO = Path(__file__).resolve().parents[1]
SPEC = ContaminationSpec()

# A 60-word question: long enough for 13-grams anywhere in it.
LONG = ("A train leaves the station at seven in the morning carrying two hundred passengers toward the coast "
        "while a second train departs an hour later from the same platform with half as many riders and "
        "travels twice as fast along the parallel track until both arrive at the harbour where the "
        "passengers change onto ferries bound for three different islands")


def q(qid: str, dataset: str, text: str, choices: list[str] | None = None, split: str = "train") -> dict[str, Any]:
    return {"id": qid, "dataset": dataset, "question": text, "choices": choices, "split": split,
            "domain": "math", "answer": "1", "answer_type": "numeric"}


@pytest.mark.parametrize(("a", "b"), [
    ("What is (47 + 38) mod 10?", "  what IS 47 + 38 mod 10 "),  # case, spacing, brackets, ?
    ("The patient’s “fever” rose.", "The patient's \"fever\" rose"),  # typographic quotes
    ("Ｗhat is ４２?", "What is 42"),  # NFKC: full-width letters and digits
    ("Straße", "STRASSE"),  # casefold, not lower
    ("It costs $5, or 5%.", "it costs $ 5 or 5 %"),  # symbols and % are tokens, punctuation is not
])
def test_normalisation_equates(a: str, b: str) -> None:
    assert tokens(a) == tokens(b)


@pytest.mark.parametrize(("a", "b"), [
    ("What is (47 + 38) mod 10?", "What is (47 - 38) mod 10?"),  # operators are content
    ("What is 6 * 7?", "What is 6 / 7?"),
    ("Is 3861 even?", "Is 3862 even?"),
    ("What is -5 + 3?", "What is 5 + 3?"),  # ASCII - is a minus sign; a typographic dash is punctuation
])
def test_normalisation_keeps_apart(a: str, b: str) -> None:
    assert tokens(a) != tokens(b)


def _planted() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    evals = [
        q("ev/exact", "gsm", "A baker sells 12 muffins, each for $3. How much money does she make?", split="test"),
        q("ev/mc", "arc", "Which gas do plants absorb?", ["Oxygen", "Carbon dioxide", "Nitrogen"], split="test"),
        q("ev/long", "gsm", LONG, split="test"),
        q("ev/short", "par", "Is 3861 even?", split="test"),
    ]
    near = LONG.replace("seven", "eight").replace("half", "a third").replace("islands", "towns")
    train = [
        q("tr/exact", "t1", "a  BAKER sells 12 muffins each for $3 — how much money does she make"),
        q("tr/mc", "t1", "Which gas do plants absorb", ["oxygen", "carbon dioxide", "nitrogen"]),
        q("tr/near", "t2", near),
        q("tr/similar-short", "t2", "Is 3863 even?"),  # merely similar: not flagged
        q("tr/mc-other", "t2", "Which gas do plants absorb?", ["Oxygen", "Helium", "Nitrogen"]),  # other choices
        q("tr/clean", "t2", "How many legs do four spiders have in total?"),
    ]
    return train, evals


def test_planted_duplicates_and_near_duplicates_are_found_and_quarantined() -> None:
    train, evals = _planted()
    report = find_contamination(train, evals, SPEC)
    got = {(p.train_id, p.eval_id): p for p in report.pairs}
    assert set(got) == {("tr/exact", "ev/exact"), ("tr/mc", "ev/mc"), ("tr/near", "ev/long")}
    assert got["tr/exact", "ev/exact"].kind == got["tr/mc", "ev/mc"].kind == "exact"
    near = got["tr/near", "ev/long"]
    assert near.kind == "ngram" and near.shared_ngrams >= 1 and len(near.evidence.split()) == SPEC.ngram
    assert near.evidence in " ".join(tokens(LONG))

    kept, removed, _ = decontaminate(train, evals, SPEC)
    assert [r["id"] for r in kept] == ["tr/similar-short", "tr/mc-other", "tr/clean"]
    assert {r["id"]: r["reason"] for r in removed} == dict.fromkeys(["tr/exact", "tr/mc", "tr/near"], "contaminated")
    assert "ev/long" in next(r["detail"] for r in removed if r["id"] == "tr/near")
    kept, removed, report = decontaminate(train, evals, SPEC.model_copy(update={"quarantine": False}))
    assert len(kept) == len(train) and removed == [] and len(report.pairs) == 3  # reported, not removed


def test_a_shorter_shared_run_than_n_is_not_a_near_duplicate() -> None:
    words = LONG.split()
    # every 10th word changed: the longest shared run is 9 words, under 13
    changed = " ".join(f"x{i}" if i % 10 == 9 else w for i, w in enumerate(words))
    report = find_contamination([q("tr", "t", changed)], [q("ev", "e", LONG, split="test")], SPEC)
    assert report.pairs == []
    assert find_contamination([q("tr", "t", changed)], [q("ev", "e", LONG, split="test")],
                              SPEC.model_copy(update={"ngram": 8})).pairs  # but it is at n = 8


def test_template_text_ties_no_questions_together() -> None:
    """Benchmark boilerplate shared by many questions is no evidence; the content of a copy is."""
    boiler = "Which of the following is the most likely cause of this patient's symptoms?"
    evals = [q(f"ev/{i}", "medqa", f"A {20 + i}-year-old patient presents with symptom number {i}. {boiler}",
               split="test") for i in range(6)]
    train = [q(f"tr/{i}", "medqa", f"A woman in her {30 + i}s reports complaint code {i}. {boiler}") for i in range(6)]
    leak = "A 61-year-old man with a long history of smoking reports a productive cough and weight loss over months."
    evals.append(q("ev/leak", "medqa", f"{leak} {boiler}", split="test"))
    train.append(q("tr/leak", "medqa", f"{leak.replace('man', 'woman')} {boiler}"))
    report = find_contamination(train, evals, SPEC)
    assert [(p.train_id, p.eval_id, p.kind) for p in report.pairs] == [("tr/leak", "ev/leak", "ngram")]
    assert report.template_ngrams > 0
    assert any("which of the following" in ex["ngram"] for ex in report.template_examples)


def test_the_mini_world_split_is_clean() -> None:
    """The whole mini world (every question of both splits of every domain): disjoint by construction,
    so the check must find nothing. All its questions are under 13 tokens: only exact matches apply."""
    train, evals = [], []
    for domain in world.DOMAINS:
        train += [dict(x) for x in world.generate_questions(domain, "train", world.pool_size(domain, "train"))]
        evals += [dict(x) for x in world.generate_questions(domain, "test", world.pool_size(domain, "test"))]
    assert max(len(tokens(x["question"] + " " + " ".join(x["choices"] or []))) for x in train) < SPEC.ngram
    report = find_contamination(train, evals, SPEC)
    assert report.pairs == [] and report.train_questions == len(train) > 20_000
    # the control: the same check does flag a test question copied into the training side
    assert find_contamination([*train, {**evals[0], "id": "copy"}], evals, SPEC).flagged_train_ids == {"copy"}


def _ctx(cfg: Any, node_id: str, tmp: Path, inputs: dict[str, Path]) -> StageContext:
    plan = build_plan(cfg)
    out = tmp / node_id.replace("/", "_")
    out.mkdir()
    return StageContext(cfg, plan.nodes[node_id], inputs, out, tmp / "work")


def test_prepare_stage_in_the_mini_world_reports_zero(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "mini.yaml")
    suite = _ctx(cfg, "prepare/eval-suite", tmp_path, {})
    prepare_run(suite)
    pool = _ctx(cfg, "prepare/train-pool", tmp_path, {"prepare/eval-suite": suite.out})
    result = prepare_run(pool)
    summary = json.loads((pool.out / REPORT_FILE).read_text())
    assert summary["pairs"] == summary["train_flagged"] == 0 and summary["quarantine"] is True
    assert summary["train_questions"] == 2000 and summary["eval_questions"] == 500
    assert result.rows["contamination.parquet"] == 0 == pq.read_table(pool.out / PAIRS_FILE).num_rows
    assert result.rows["questions.parquet"] == 2000 and contamination_counts(pool.out) == {}
    counts = json.loads((pool.out / "counts.json").read_text())
    assert all(d["contaminated"] == 0 for d in counts["datasets"].values())


def test_prepare_quarantines_before_anything_is_generated(tmp_path: Path) -> None:
    train, evals = _planted()
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in train))
    specs = {"pool": DatasetSpec(source=str(src), answer_type="numeric", domain="math", train_split="train")}
    out = tmp_path / "pool"
    stats = prepare_questions(specs, "train", out, eval_questions=evals, contamination=SPEC)
    left = {r["id"] for r in pq.read_table(out / "questions.parquet").to_pylist()}
    assert left == {"tr/similar-short", "tr/mc-other", "tr/clean"}
    bad = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert sorted(r["id"] for r in bad if r["reason"] == "contaminated") == ["tr/exact", "tr/mc", "tr/near"]
    assert stats["datasets"]["pool"] | {"reasons": None} == {**stats["datasets"]["pool"], "good": 3,
                                                                "quarantined": 3, "contaminated": 3, "reasons": None}
    assert stats["contamination"]["pairs_by_kind"] == {"exact": 2, "ngram": 1}
    assert contamination_counts(out) == {"gsm": {"train_flagged": 0, "train_quarantined": 0, "eval_matched": 2},
                                         "arc": {"train_flagged": 0, "train_quarantined": 0, "eval_matched": 1},
                                         "pool": {"train_flagged": 3, "train_quarantined": 3, "eval_matched": 0}}
    pairs = pq.read_table(out / PAIRS_FILE).to_pylist()
    assert {(p["train_id"], p["eval_id"], p["kind"]) for p in pairs} == {
        ("tr/exact", "ev/exact", "exact"), ("tr/mc", "ev/mc", "exact"), ("tr/near", "ev/long", "ngram")}
    again = tmp_path / "again"  # same inputs, same bytes (no timings in the artifact)
    prepare_questions(specs, "train", again, eval_questions=evals, contamination=SPEC)
    for name in (REPORT_FILE, PAIRS_FILE, "questions.parquet", "quarantine.parquet", "counts.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    with pytest.raises(ValueError, match="go together"):
        prepare_questions(specs, "train", out, eval_questions=evals)


def test_the_setting_is_part_of_the_pool_key_and_everything_downstream() -> None:
    raw = _mini_raw()
    base = build_plan(parse_config(raw))
    off = build_plan(parse_config({**raw, "contamination": {"quarantine": False}}))
    n8 = build_plan(parse_config({**raw, "contamination": {"ngram": 8}}))
    same = build_plan(parse_config({**raw, "contamination": {"quarantine": True, "ngram": 13}}))
    assert same.keys == base.keys  # the defaults spelled out change nothing
    for other in (off, n8):
        assert other.keys["prepare/eval-suite"] == base.keys["prepare/eval-suite"]
        assert other.keys["prepare/train-pool"] != base.keys["prepare/train-pool"]
        changed = {nid for nid in base.keys if other.keys[nid] != base.keys[nid]}
        assert {"generate/mini-teacher", "verify/mini-teacher", "report/study"} <= changed
        assert not any(nid.startswith("build/") for nid in changed)
    assert base.nodes["prepare/train-pool"].deps == ("prepare/eval-suite",)


def _mini_raw() -> dict[str, Any]:
    return yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("block", "message"), [
    ({"ngram": 5}, "contamination.ngram: Input should be greater than or equal to 8"),
    ({"quarantine": "maybe"}, "contamination.quarantine"),
    ({"n_gram": 13}, "contamination.n_gram: unknown key"),
])
def test_bad_settings_are_clear_errors(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config({**_mini_raw(), "contamination": block})


def test_counts_of_a_pool_without_a_report_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no contamination report"):
        contamination_counts(tmp_path)

