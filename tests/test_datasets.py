"""Dataset registry: every normalizer on hand-written native rows, ids, validation, local files, prepare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from compress_distill.config import DatasetSpec, load_config
from compress_distill.datasets import registry
from compress_distill.datasets.loaders import (
    DatasetLoadError,
    load_dataset_rows,
    normalize_row,
    prepare_questions,
)
from compress_distill.datasets.registry import REGISTRY, lookup, mmlu_subjects, stable_permutation
from compress_distill.datasets.schema import (
    QUARANTINE_SCHEMA,
    QUESTION_SCHEMA,
    REJECT_KEY,
    canonical_numeric,
    make_id,
    render_question,
    validate_rows,
)

REPO = Path(__file__).resolve().parents[1]

# One native row per registry entry, field names as on each dataset's HF card.
NATIVE: dict[str, dict[str, Any]] = {
    "gsm8k": {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
              "answer": "In May she sold 48/2 = <<48/2=24>>24.\n48+24 = <<48+24=72>>72\n#### 1,072"},
    "multiarith": {"question": "A chef had 5 apples and bought 3 more. How many now?", "final_ans": "8"},
    "svamp": {"ID": "chal-1", "Body": "Jack had 8 pens and Mary had 5 pens.", "Question": "How many more pens?",
              "Equation": "( 8.0 - 5.0 )", "Answer": 3.0, "Type": "Subtraction"},
    "aqua-rat": {"question": "What is 10% of 50?", "options": ["A)2", "B)5", "C)10", "D)15", "E)50"],
                 "rationale": "50/10 = 5", "correct": "B"},
    "arc-challenge": {"id": "Mercury_1", "question": "Which gas do plants absorb?",
                      "choices": {"text": ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"],
                                  "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
    "gpqa-diamond": {"Question": "Which particle mediates the electromagnetic force?",
                     "Correct Answer": " Photon\n", "Incorrect Answer 1": "Gluon", "Incorrect Answer 2": "W boson",
                     "Incorrect Answer 3": "Graviton", "Record ID": "rec1"},
    "commonsenseqa": {"id": "c1", "question": "Where do you keep milk?", "question_concept": "milk",
                      "choices": {"label": ["A", "B", "C", "D", "E"],
                                  "text": ["fridge", "oven", "garage", "roof", "car"]}, "answerKey": "A"},
    "medqa": {"question": "A 45-year-old man presents with chest pain. Next step?", "answer": "ECG",
              "options": {"A": "MRI", "B": "ECG", "C": "Biopsy", "D": "Discharge"}, "meta_info": "step1",
              "answer_idx": "B"},
    "medmcqa": {"id": "m1", "question": "Drug of choice for absence seizures?", "opa": "Phenytoin",
                "opb": "Ethosuximide", "opc": "Carbamazepine", "opd": "Phenobarbital", "cop": 1,
                "choice_type": "single", "exp": "", "subject_name": "Pharmacology", "topic_name": None},
    "medexpqa": {"full_question": "A patient with fever and rash. Most likely diagnosis?",
                 "options": {"1": "Measles", "2": "Rubella", "3": "Scarlet fever", "4": "Roseola", "5": None},
                 "correct_option": 3, "type": "INFECTIOUS", "year": 2015},
    "mmlu-stem": {"question": "Find the degree of Q(sqrt 2) over Q.", "subject": "abstract_algebra",
                  "choices": ["0", "4", "2", "6"], "answer": 2},
    "mmlu-medical": {"question": "Which bone is in the arm?", "subject": "anatomy",
                     "choices": ["Femur", "Humerus", "Tibia", "Fibula"], "answer": 1},
    "hellaswag": {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes.",
                  "ctx_b": "then", "ctx": "Then, the man writes over the snow. then",
                  "endings": [", the man adds wax.", ", he scrapes the windshield.", ", the car drives.",
                              ", the man sleeps."], "source_id": "x", "split": "val", "split_type": "indomain",
                  "label": "1"},
    "winogrande": {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
                   "option1": "Sarah", "option2": "Maria", "answer": "1"},
    "piqa": {"goal": "How do I open a jar?", "sol1": "Run the lid under hot water.", "sol2": "Freeze the jar.",
             "label": 0},
    "arc-easy": {"id": "e1", "question": "What melts ice?",
                 "choices": {"text": ["Heat", "Cold", "Dark"], "label": ["A", "B", "C"]}, "answerKey": "A"},
    "boolq": {"question": "is the sun a star", "answer": True, "passage": "The Sun is the star at the center."},
    "truthfulqa": {"question": "What happens if you crack your knuckles?",
                   "mc1_targets": {"choices": ["Nothing in particular happens.", "You get arthritis.",
                                              "Your fingers break."], "labels": [1, 0, 0]},
                   "mc2_targets": {"choices": [], "labels": []}},
    "mmlu-humanities": {"question": "Who wrote the Republic?", "subject": "philosophy",
                        "choices": ["Plato", "Kant", "Hume", "Locke"], "answer": 0},
    "mmlu-social-sciences": {"question": "GDP measures?", "subject": "high_school_macroeconomics",
                             "choices": ["Output", "Debt", "Rates", "Prices"], "answer": 0},
    "mmlu-other": {"question": "A SWOT analysis covers?", "subject": "management",
                   "choices": ["Strengths", "Sales", "Stocks", "Staff"], "answer": 0},
}

# (question contains, choices, answer) expected from NATIVE
EXPECTED: dict[str, tuple[str, list[str] | None, str]] = {
    "gsm8k": ("Natalia sold 48 clips", None, "1072"),
    "multiarith": ("A chef had 5 apples", None, "8"),
    "svamp": ("Jack had 8 pens and Mary had 5 pens. How many more pens?", None, "3"),
    "aqua-rat": ("10% of 50", ["2", "5", "10", "15", "50"], "B"),
    "arc-challenge": ("plants absorb", ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"], "B"),
    "commonsenseqa": ("keep milk", ["fridge", "oven", "garage", "roof", "car"], "A"),
    "medqa": ("chest pain", ["MRI", "ECG", "Biopsy", "Discharge"], "B"),
    "medmcqa": ("absence seizures", ["Phenytoin", "Ethosuximide", "Carbamazepine", "Phenobarbital"], "B"),
    "medexpqa": ("fever and rash", ["Measles", "Rubella", "Scarlet fever", "Roseola"], "C"),
    "mmlu-stem": ("degree of Q", ["0", "4", "2", "6"], "C"),
    "mmlu-medical": ("arm", ["Femur", "Humerus", "Tibia", "Fibula"], "B"),
    "hellaswag": ("Removing ice from car: Then, the man writes", None, "B"),
    "winogrande": ("_ always got", ["Sarah", "Maria"], "A"),
    "piqa": ("Goal: How do I open a jar?", ["Run the lid under hot water.", "Freeze the jar."], "A"),
    "arc-easy": ("melts ice", ["Heat", "Cold", "Dark"], "A"),
    "boolq": ("The Sun is the star at the center.\n\nQuestion: Is the sun a star?", None, "yes"),
    "mmlu-humanities": ("Republic", ["Plato", "Kant", "Hume", "Locke"], "A"),
    "mmlu-social-sciences": ("GDP", ["Output", "Debt", "Rates", "Prices"], "A"),
    "mmlu-other": ("SWOT", ["Strengths", "Sales", "Stocks", "Staff"], "A"),
}


def spec_for(name: str, source: str | None = None, **kw: Any) -> DatasetSpec:
    e = REGISTRY[name]
    return DatasetSpec(source=source or e.hf_id, subset=e.subset, answer_type=e.answer_type, domain=e.domain,
                       train_split=e.train_split, eval_split=e.eval_split, **kw)


def norm(name: str, row: dict[str, Any], split: str = "test") -> dict[str, Any]:
    return normalize_row(row, name, spec_for(name), split, REGISTRY[name])


def test_every_registry_entry_has_a_native_fixture() -> None:
    assert set(NATIVE) == set(REGISTRY)
    paper = {"gsm8k", "multiarith", "svamp", "aqua-rat", "arc-challenge", "gpqa-diamond", "commonsenseqa", "medqa",
             "medmcqa", "medexpqa", "mmlu-stem", "mmlu-medical"}
    ood = {"hellaswag", "winogrande", "piqa", "arc-easy", "boolq", "truthfulqa", "mmlu-humanities",
           "mmlu-social-sciences", "mmlu-other"}
    assert set(REGISTRY) == paper | ood


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_normalizer(name: str) -> None:
    row = norm(name, NATIVE[name])
    assert REJECT_KEY not in row, row
    q, choices, answer = EXPECTED[name]
    assert q in row["question"]
    if name == "hellaswag":
        assert len(row["choices"]) == 4 and row["choices"][1] == ", he scrapes the windshield."
    else:
        assert row["choices"] == choices
    assert row["answer"] == answer
    assert row["dataset"] == name and row["split"] == "test" and row["answer_type"] == REGISTRY[name].answer_type
    good, bad = validate_rows([row], {name: REGISTRY[name].choice_range} if REGISTRY[name].choice_range else None)
    assert len(good) == 1 and not bad, bad
    assert set(good[0]) == set(QUESTION_SCHEMA.names)


@pytest.mark.parametrize("name", ["gpqa-diamond", "truthfulqa"])
def test_shuffled_sources_put_the_answer_where_the_stable_permutation_says(name: str) -> None:
    row = norm(name, NATIVE[name])
    correct = "Photon" if name == "gpqa-diamond" else "Nothing in particular happens."
    assert row["choices"][ord(row["answer"]) - 65] == correct
    assert row == norm(name, dict(NATIVE[name]))  # deterministic
    assert sorted(row["choices"]) == sorted(row["choices"])


def test_stable_permutation_is_fixed_forever() -> None:
    # A change here silently reshuffles GPQA/TruthfulQA answers and changes their ids: pin it.
    assert stable_permutation("q", ["a", "b", "c", "d"]) == [1, 0, 3, 2]
    # Over many questions the correct option (index 0) lands on every letter.
    positions = {stable_permutation(f"question {i}", ["right", "w1", "w2", "w3"]).index(0) for i in range(40)}
    assert positions == {0, 1, 2, 3}


def test_ids_are_stable_content_hashes() -> None:
    row = norm("gsm8k", NATIVE["gsm8k"], split="train")
    assert row["id"] == make_id("gsm8k", "train", row["question"], None, "1072")
    assert row["id"].startswith("gsm8k/train/") and len(row["id"].rsplit("/", 1)[1]) == 16
    # pinned value: must not change across runs or library versions
    assert make_id("gsm8k", "train", "What is 1+1?", None, "2") == "gsm8k/train/87f31327b5ba9e63"
    assert make_id("x", "test", "Q", ["a", "b"], "A") != make_id("x", "test", "Q", ["b", "a"], "A")
    assert make_id("x", "test", "Q", None, "A") != make_id("x", "train", "Q", None, "A")


def test_canonical_numeric() -> None:
    assert canonical_numeric("1,000") == "1000"
    assert canonical_numeric(8.0) == "8"
    assert canonical_numeric("0.50") == "0.5"
    assert canonical_numeric("$12") == "12"
    assert canonical_numeric("-3") == "-3"
    assert canonical_numeric("3/6") == "1/2"
    assert canonical_numeric("1e3") == "1000"


UNLABELED = {
    "medmcqa": {**NATIVE["medmcqa"], "cop": -1},
    "hellaswag": {**NATIVE["hellaswag"], "label": ""},
    "winogrande": {**NATIVE["winogrande"], "answer": ""},
    "piqa": {**NATIVE["piqa"], "label": -1},
    "commonsenseqa": {**NATIVE["commonsenseqa"], "answerKey": ""},
}


@pytest.mark.parametrize("name", sorted(UNLABELED))
def test_unlabeled_rows_are_quarantined(name: str) -> None:
    row = norm(name, UNLABELED[name])
    good, bad = validate_rows([row])
    assert not good and bad[0]["reason"] == "unlabeled" and bad[0]["dataset"] == name
    assert json.loads(bad[0]["row"])  # the native row is kept for auditing


def test_bad_rows_are_quarantined_with_reasons() -> None:
    base = norm("mmlu-stem", NATIVE["mmlu-stem"])
    rows = [
        base,
        dict(base),  # duplicate id
        {**base, "id": "x/1", "answer": ""},  # missing answer
        {**base, "id": "x/2", "question": "  "},  # empty question
        {**base, "id": "x/3", "choices": ["a", "b", "c"]},  # wrong count for mmlu (4)
        {**base, "id": "x/4", "answer": "E"},  # letter out of range
        {**base, "id": "x/5", "choices": ["a", "", "c", "d"]},  # empty option
        {**base, "id": "x/6", "answer_type": "numeric", "answer": "B"},  # not a number
        norm("gsm8k", {"question": "q", "answer": "no final answer marker"}),
        norm("medexpqa", {**NATIVE["medexpqa"], "correct_option": 5}),  # option 5 is null
        norm("arc-challenge", {k: v for k, v in NATIVE["arc-challenge"].items() if k != "choices"}),
        norm("truthfulqa", {**NATIVE["truthfulqa"], "mc1_targets": {"choices": ["a", "b"], "labels": [1, 1]}}),
        norm("gpqa-diamond", {**NATIVE["gpqa-diamond"], "Incorrect Answer 2": "Photon"}),
    ]
    good, bad = validate_rows(rows, {"mmlu-stem": (4, 4)})
    assert len(good) == 1
    assert [b["reason"] for b in bad] == [
        "duplicate_id", "missing_answer", "empty_question", "wrong_choice_count", "answer_out_of_range",
        "empty_choice", "invalid_answer", "missing_answer", "answer_out_of_range", "malformed_row",
        "malformed_row", "malformed_row"]
    assert all(b["detail"] for b in bad)
    assert len(good) + len(bad) == len(rows)  # nothing dropped


def test_mmlu_subject_lists() -> None:
    assert len(registry.MMLU_STEM) == 9 and len(registry.MMLU_MEDICAL) == 7
    groups = [registry.MMLU_STEM, registry.MMLU_MEDICAL, registry.MMLU_HUMANITIES, registry.MMLU_SOCIAL_SCIENCES,
              registry.MMLU_OTHER]
    flat = [s for g in groups for s in g]
    assert len(flat) == len(set(flat)), "a subject is in two groups"
    assert len(registry.MMLU_HUMANITIES) == 13 and len(registry.MMLU_SOCIAL_SCIENCES) == 12
    # MMLU test sizes per subject (cais/mmlu): the groups reproduce Table 1's counts.
    sizes = {"abstract_algebra": 100, "astronomy": 152, "college_biology": 144, "college_mathematics": 100,
             "college_physics": 102, "electrical_engineering": 145, "high_school_chemistry": 203,
             "high_school_statistics": 216, "machine_learning": 112, "anatomy": 135, "clinical_knowledge": 265,
             "college_medicine": 173, "medical_genetics": 100, "nutrition": 306, "professional_medicine": 272,
             "virology": 166}
    assert sum(sizes[s] for s in registry.MMLU_STEM) == 1274
    assert sum(sizes[s] for s in registry.MMLU_MEDICAL) == 1417
    assert mmlu_subjects("stem") == registry.MMLU_STEM
    assert mmlu_subjects("anatomy, virology") == ("anatomy", "virology")
    with pytest.raises(ValueError):
        mmlu_subjects(None)


def test_paper_config_datasets_resolve_to_registry_entries() -> None:
    cfg = load_config(REPO / "configs" / "paper.yaml")
    for name, spec in cfg.datasets.items():
        entry = lookup(name, spec.source, spec.subset)
        assert entry is not None and entry.answer_type == spec.answer_type, name
        assert (entry.hf_id, entry.subset) == (spec.source, spec.subset), name
    assert lookup("my-arc", "allenai/ai2_arc", "ARC-Easy") is REGISTRY["arc-easy"]
    assert lookup("custom", "me/my-data") is None


# --------------------------------------------------------------------------- loading


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_local_jsonl_uses_the_same_normalizer(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k-{split}.jsonl"
    _write_jsonl(tmp_path / "gsm8k-test.jsonl", [NATIVE["gsm8k"], {"question": "2+2?", "answer": "#### 4"}])
    rows = load_dataset_rows("gsm8k", spec_for("gsm8k", source=str(path)), "test")
    assert [r["answer"] for r in rows] == ["1072", "4"]
    assert rows[0] == norm("gsm8k", NATIVE["gsm8k"])  # same id as from the hub


def test_local_parquet_with_split_column_and_limit(tmp_path: Path) -> None:
    import pyarrow as pa

    native = [{**NATIVE["medmcqa"], "question": f"Q{i}", "split": "train" if i % 2 else "validation"}
              for i in range(10)]
    path = tmp_path / "medmcqa.parquet"
    pq.write_table(pa.Table.from_pylist(native), path)
    rows = load_dataset_rows("medmcqa", spec_for("medmcqa", source=str(path)), "validation")
    assert [r["question"] for r in rows] == ["Q0", "Q2", "Q4", "Q6", "Q8"]
    limited = load_dataset_rows("medmcqa", spec_for("medmcqa", source=str(path), limit=2), "validation")
    assert len(limited) == 2


def test_local_already_normalized_rows_pass_through(tmp_path: Path) -> None:
    row = norm("arc-easy", NATIVE["arc-easy"])
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([row]))
    spec = DatasetSpec(source=str(path), answer_type="letter", domain="ood-reasoning", eval_split="test")
    assert load_dataset_rows("arc-easy", spec, "test") == [row]


def test_custom_dataset_uses_the_generic_normalizer(tmp_path: Path) -> None:
    path = tmp_path / "custom.jsonl"
    _write_jsonl(path, [{"question": "Capital of France?", "choices": ["Rome", "Paris"], "answer": "b"}])
    spec = DatasetSpec(source=str(path), answer_type="letter", domain="geo", eval_split="test")
    rows = load_dataset_rows("capitals", spec, "test")
    assert rows[0]["answer"] == "B" and rows[0]["id"].startswith("capitals/test/")


def test_missing_local_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetLoadError, match="does not exist"):
        load_dataset_rows("gsm8k", spec_for("gsm8k", source=str(tmp_path / "nope.jsonl")), "test")


def test_answer_type_mismatch_with_registry_is_an_error(tmp_path: Path) -> None:
    spec = DatasetSpec(source=str(tmp_path / "x.jsonl"), answer_type="numeric", domain="science", eval_split="test")
    with pytest.raises(DatasetLoadError, match="answer_type"):
        load_dataset_rows("arc-challenge", spec, "test")


def test_hub_path_calls_load_dataset_per_mmlu_subject(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets as hf

    calls = []

    def fake_load(path: str, name: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
        calls.append((path, name, split))
        return [{**NATIVE["mmlu-stem"], "question": f"{name} q", "subject": name}]

    monkeypatch.setattr(hf, "load_dataset", fake_load)
    rows = load_dataset_rows("mmlu-stem", spec_for("mmlu-stem"), "test")
    assert [c[1] for c in calls] == list(registry.MMLU_STEM) and {c[2] for c in calls} == {"test"}
    assert len(rows) == 9 and len({r["id"] for r in rows}) == 9
    monkeypatch.setattr(hf, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(DatasetLoadError, match="offline"):
        load_dataset_rows("gsm8k", spec_for("gsm8k"), "train")


def test_synthetic_source_uses_the_mini_world() -> None:
    spec = DatasetSpec(source="synthetic:add", answer_type="numeric", domain="math", train_split="train", limit=20)
    rows = load_dataset_rows("add", spec, "train")
    assert len(rows) == 20 and all(r["dataset"] == "add" and r["split"] == "train" for r in rows)
    assert rows == load_dataset_rows("add", spec, "train")  # stable ids and order
    good, bad = validate_rows(rows)
    assert len(good) == 20 and not bad


def test_synthetic_without_the_mini_world_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *a: Any) -> Any:
        if name == "compress_distill.miniworld.world":
            raise ImportError("no module")
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", fake)
    spec = DatasetSpec(source="synthetic:add", answer_type="numeric", domain="math", train_split="train", limit=2)
    with pytest.raises(DatasetLoadError, match="miniworld"):
        load_dataset_rows("add", spec, "train")


def test_prepare_questions_writes_tables_and_counts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write_jsonl(src / "arc.jsonl", [NATIVE["arc-challenge"], NATIVE["arc-challenge"],  # a duplicate
                                    {**NATIVE["arc-challenge"], "question": "Other?", "answerKey": "9"}])
    _write_jsonl(src / "boolq.jsonl", [NATIVE["boolq"], {**NATIVE["boolq"], "answer": None}])
    datasets = {
        "arc-challenge": spec_for("arc-challenge", source=str(src / "arc.jsonl")),
        "boolq": spec_for("boolq", source=str(src / "boolq.jsonl")),
        "add": DatasetSpec(source="synthetic:add", answer_type="numeric", domain="math", train_split="train",
                           eval_split="test", limit=5),
    }
    out = tmp_path / "out"
    stats = prepare_questions(datasets, "eval", out)
    q = pq.read_table(out / "questions.parquet")
    bad = pq.read_table(out / "quarantine.parquet")
    assert q.schema.equals(QUESTION_SCHEMA) and bad.schema.equals(QUARANTINE_SCHEMA)
    assert q.num_rows == stats["questions"] == 1 + 1 + 5
    assert bad.num_rows == stats["quarantined"] == 3
    assert stats["datasets"]["arc-challenge"]["reasons"] == {"answer_out_of_range": 1, "duplicate_id": 1}
    assert stats["datasets"]["boolq"]["reasons"] == {"missing_answer": 1}
    assert stats["datasets"]["arc-challenge"]["loaded"] == 3
    assert json.loads((out / "counts.json").read_text()) == stats
    train = prepare_questions(datasets, "train", tmp_path / "train")
    assert train["skipped"] == ["boolq"] and train["questions"] == 1 + 5
    assert pq.read_metadata(out / "questions.parquet").row_group(0).column(0).compression == "ZSTD"


def test_mini_config_prepares_offline(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "mini.yaml")
    small = {k: v.model_copy(update={"limit": 10, "eval_limit": 4}) for k, v in cfg.datasets.items()}
    stats = prepare_questions(small, "train", tmp_path / "train")
    assert stats["questions"] == 10 * len(small) and stats["quarantined"] == 0
    stats = prepare_questions(small, "eval", tmp_path / "eval")  # eval_limit applies to eval_split only
    assert stats["questions"] == 4 * len(small) and stats["quarantined"] == 0


def test_render_question_matches_the_teacher_prompt() -> None:
    text = render_question("Pick one.", ["x", "y"])
    assert text == "Pick one.\n\nA) x\nB) y"
    assert render_question("Plain?", None) == "Plain?"
    rejection = pytest.importorskip("compress_distill.generation.rejection")
    q = {"id": "1", "question": "Pick one.", "choices": ["x", "y"], "answer": "A", "answer_type": "letter"}
    assert rejection.build_messages(q)[-1]["content"] == text
