"""The dataset registry: the paper's Table 1 datasets and the OOD suites, each with a normalizer.

A normalizer maps ONE native row (field names as on the dataset's Hugging Face card) to
`(question, choices, raw_answer)`; `loaders.normalize_rows` adds the id, canonical answer and
the rest of the schema. A row that cannot be normalized raises `RowError` (or a KeyError for a
missing field) and is quarantined, never dropped.

Choice order. Datasets whose source lists the correct option first (GPQA: "Correct Answer",
TruthfulQA mc1: label 1 at index 0) are shuffled with a content-seeded permutation
(`stable_permutation`): sha256 of question + option text, so it is the same on every machine,
Python and library version, and independent of row order.

MMLU groups (`subset` of a cais/mmlu entry): `stem` and `medical` are the paper's two
in-distribution groups; `humanities`, `social_sciences` and `other` are MMLU's own
categories (Hendrycks et al. 2021, categories.py), with `other` minus the medical subjects
so that no test question is counted both in- and out-of-distribution. The paper does not
list its 9 STEM subjects; `MMLU_STEM` reproduces its counts (dev 45, test 1,274) and
spans all six MMLU STEM sub-categories (math, physics, chemistry, biology, CS,
engineering). `MMLU_MEDICAL` is the only 7-subject health set matching dev 35 / test 1,417.
A `subset` may also be one subject or a comma-separated list of subjects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .schema import LETTERS, RowError

AnswerType = Literal["numeric", "letter", "boolean", "latex"]
Normalized = tuple[str, list[str] | None, Any]
Normalizer = Callable[[Mapping[str, Any]], Normalized]

# ASSUMPTION (see module docstring): chosen to match the paper's dev/test counts exactly.
MMLU_STEM = (
    "abstract_algebra", "astronomy", "college_biology", "college_mathematics", "college_physics",
    "electrical_engineering", "high_school_chemistry", "high_school_statistics", "machine_learning",
)
MMLU_MEDICAL = (
    "anatomy", "clinical_knowledge", "college_medicine", "medical_genetics", "nutrition",
    "professional_medicine", "virology",
)
MMLU_HUMANITIES = (
    "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
    "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
    "philosophy", "prehistory", "professional_law", "world_religions",
)
MMLU_SOCIAL_SCIENCES = (
    "econometrics", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
)
# MMLU's "other (business, health, misc.)" is these plus the 7 medical subjects, which are in-distribution here.
MMLU_OTHER = (
    "business_ethics", "global_facts", "human_aging", "management", "marketing", "miscellaneous",
    "professional_accounting",
)
MMLU_GROUPS: dict[str, tuple[str, ...]] = {
    "stem": MMLU_STEM, "medical": MMLU_MEDICAL, "humanities": MMLU_HUMANITIES,
    "social_sciences": MMLU_SOCIAL_SCIENCES, "other": MMLU_OTHER,
}


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    hf_id: str
    subset: str | None
    answer_type: AnswerType
    domain: str
    normalize: Normalizer
    choice_range: tuple[int, int] | None  # allowed number of choices; None: not multiple choice
    train_split: str | None = None
    eval_split: str | None = None
    paper_sizes: tuple[int | None, int | None] | None = None  # Table 1 (train, eval), for sanity logs


# --------------------------------------------------------------------------- helpers

def field(row: Mapping[str, Any], name: str) -> Any:
    if name not in row or row[name] is None:
        raise RowError("malformed_row", f"missing field {name!r}")
    return row[name]


def gold(row: Mapping[str, Any], name: str) -> Any:
    """The gold-answer field: absent or null is a missing answer, not a malformed row."""
    if row.get(name) is None:
        raise RowError("missing_answer", f"no gold answer in field {name!r}")
    return row[name]


def text(value: Any) -> str:
    return str(value).strip()


def stable_permutation(key: str, options: Sequence[str]) -> list[int]:
    """Indices of `options` in a content-seeded order (same everywhere, for ever)."""
    def rank(i: int) -> tuple[str, int]:
        return hashlib.sha256(f"{key}\x1f{options[i]}".encode()).hexdigest(), i
    return sorted(range(len(options)), key=rank)


def shuffled(key: str, correct: str, others: Sequence[str]) -> tuple[list[str], str]:
    """(choices, answer letter) with the correct option placed by `stable_permutation`."""
    options = [correct, *others]
    if correct in others:
        raise RowError("malformed_row", "the correct answer text equals an incorrect option")
    order = stable_permutation(key, options)
    return [options[i] for i in order], LETTERS[order.index(0)]


def index_to_letter(value: Any, n: int, *, base: int = 0) -> str:
    """A 0- or 1-based option index -> letter; negative/None means the row has no label."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError("unlabeled", "no answer label")
    try:
        i = int(value) - base
    except (TypeError, ValueError):
        raise RowError("invalid_answer", f"answer index {value!r} is not an integer") from None
    if i < 0:
        raise RowError("unlabeled", f"answer index {value!r} (hidden label)")
    if i >= n:
        raise RowError("answer_out_of_range", f"answer index {value!r} but {n} choices")
    return LETTERS[i]


# --------------------------------------------------------------------------- normalizers

def norm_gsm8k(row: Mapping[str, Any]) -> Normalized:
    solution = str(gold(row, "answer"))
    if "####" not in solution:
        raise RowError("missing_answer", "no '####' final answer in the solution")
    return text(field(row, "question")), None, solution.rsplit("####", 1)[1].strip()


def norm_multiarith(row: Mapping[str, Any]) -> Normalized:
    return text(field(row, "question")), None, gold(row, "final_ans")


def norm_svamp(row: Mapping[str, Any]) -> Normalized:
    if row.get("question_concat"):
        question = text(row["question_concat"])
    else:  # the card's two parts: the story (Body) and the question sentence
        question = f"{text(field(row, 'Body'))} {text(field(row, 'Question'))}"
    return question, None, gold(row, "Answer")


def norm_aqua(row: Mapping[str, Any]) -> Normalized:
    choices = []
    for i, opt in enumerate(field(row, "options")):
        opt = text(opt)
        prefix = f"{LETTERS[i]})"
        choices.append(opt[len(prefix):].strip() if opt.upper().startswith(prefix) else opt)
    return text(field(row, "question")), choices, text(gold(row, "correct"))


def norm_arc(row: Mapping[str, Any]) -> Normalized:
    ch = field(row, "choices")
    labels, texts = [text(x) for x in field(ch, "label")], [text(x) for x in field(ch, "text")]
    key = text(row.get("answerKey") or "")
    if not key:
        raise RowError("unlabeled", "empty answerKey")
    if key not in labels:  # labels are A-E or 1-5; the letter is positional either way
        raise RowError("answer_out_of_range", f"answerKey {key!r} not among labels {labels}")
    return text(field(row, "question")), texts, LETTERS[labels.index(key)]


def norm_gpqa(row: Mapping[str, Any]) -> Normalized:
    question = text(field(row, "Question"))
    others = [text(field(row, f"Incorrect Answer {i}")) for i in (1, 2, 3)]
    choices, letter = shuffled(question, text(field(row, "Correct Answer")), others)
    return question, choices, letter


def norm_commonsenseqa(row: Mapping[str, Any]) -> Normalized:
    return norm_arc(row)  # same card layout: choices {label, text} + answerKey


def norm_medqa(row: Mapping[str, Any]) -> Normalized:
    options = field(row, "options")
    if isinstance(options, Mapping):
        keys = sorted(options)
        choices = [text(options[k]) for k in keys]
    else:  # some exports store [{"key": "A", "value": ...}, ...]
        keys = [text(o["key"]) for o in options]
        choices = [text(o["value"]) for o in options]
    idx = row.get("answer_idx")
    if idx and text(idx) in keys:
        return text(field(row, "question")), choices, LETTERS[keys.index(text(idx))]
    answer_text = text(gold(row, "answer"))
    if answer_text not in choices:
        raise RowError("missing_answer", "neither answer_idx nor the answer text matches an option")
    return text(field(row, "question")), choices, LETTERS[choices.index(answer_text)]


def norm_medmcqa(row: Mapping[str, Any]) -> Normalized:
    choices = [text(field(row, k)) for k in ("opa", "opb", "opc", "opd")]
    cop = row.get("cop")
    if isinstance(cop, str) and cop.strip().lower() in ("a", "b", "c", "d"):
        return text(field(row, "question")), choices, cop.strip().upper()
    # HF card: cop is a 0-3 class index; the unlabeled test split has -1.
    return text(field(row, "question")), choices, index_to_letter(cop, 4)


def norm_medexpqa(row: Mapping[str, Any]) -> Normalized:
    options = field(row, "options")
    choices: list[str] = []
    for key in sorted(options, key=int):
        value = options[key]
        if value is None or (isinstance(value, float) and value != value) or not text(value):
            break  # 4-option exams leave option "5" null
        choices.append(text(value))
    question = row.get("full_question") or field(row, "question")
    return text(question), choices, index_to_letter(row.get("correct_option"), len(choices), base=1)


def norm_mmlu(row: Mapping[str, Any]) -> Normalized:
    choices = [text(c) for c in field(row, "choices")]
    return text(field(row, "question")), choices, index_to_letter(row.get("answer"), len(choices))


def norm_hellaswag(row: Mapping[str, Any]) -> Normalized:
    label = row.get("activity_label")
    ctx = text(field(row, "ctx"))
    context = f"{text(label)}: {ctx}" if label else ctx
    question = f"Which ending is the most plausible continuation?\n{context}"
    return question, [text(e) for e in field(row, "endings")], index_to_letter(row.get("label"), 4)


def norm_winogrande(row: Mapping[str, Any]) -> Normalized:
    question = f"Which option correctly fills the blank (_)?\n{text(field(row, 'sentence'))}"
    choices = [text(field(row, "option1")), text(field(row, "option2"))]
    return question, choices, index_to_letter(row.get("answer"), 2, base=1)


def norm_piqa(row: Mapping[str, Any]) -> Normalized:
    question = f"Which solution achieves the goal?\nGoal: {text(field(row, 'goal'))}"
    choices = [text(field(row, "sol1")), text(field(row, "sol2"))]
    return question, choices, index_to_letter(row.get("label"), 2)


def norm_boolq(row: Mapping[str, Any]) -> Normalized:
    q = text(field(row, "question"))
    q = q[0].upper() + q[1:] if q else q
    question = f"{text(field(row, 'passage'))}\n\nQuestion: {q}{'' if q.endswith('?') else '?'}"
    return question, None, gold(row, "answer")


def norm_truthfulqa(row: Mapping[str, Any]) -> Normalized:
    question = text(field(row, "question"))
    targets = field(row, "mc1_targets")
    options, labels = [text(c) for c in field(targets, "choices")], list(field(targets, "labels"))
    correct = [o for o, lab in zip(options, labels, strict=True) if int(lab) == 1]
    if len(correct) != 1:
        raise RowError("malformed_row", f"mc1_targets has {len(correct)} correct options, expected 1")
    others = [o for o, lab in zip(options, labels, strict=True) if int(lab) != 1]
    choices, letter = shuffled(question, correct[0], others)  # the source puts the answer first
    return question, choices, letter


def norm_generic(row: Mapping[str, Any]) -> Normalized:
    """Custom local data: `question`, `answer`, optional `choices` (list or {label, text})."""
    choices = row.get("choices")
    if isinstance(choices, Mapping):
        choices = list(field(choices, "text"))
    return text(field(row, "question")), [text(c) for c in choices] if choices else None, gold(row, "answer")


# --------------------------------------------------------------------------- the registry

def _e(name: str, hf_id: str, subset: str | None, answer_type: AnswerType, domain: str, normalize: Normalizer,
       choice_range: tuple[int, int] | None, train: str | None, eval_: str | None,
       sizes: tuple[int | None, int | None] | None = None) -> DatasetEntry:
    return DatasetEntry(name, hf_id, subset, answer_type, domain, normalize, choice_range, train, eval_, sizes)


REGISTRY: dict[str, DatasetEntry] = {e.name: e for e in (
    # Table 1, in-distribution
    _e("gsm8k", "openai/gsm8k", "main", "numeric", "math", norm_gsm8k, None, "train", "test", (7473, 1319)),
    _e("multiarith", "ChilleD/MultiArith", None, "numeric", "math", norm_multiarith, None, "train", "test",
       (420, 180)),
    _e("svamp", "ChilleD/SVAMP", None, "numeric", "math", norm_svamp, None, "train", None, (1000, None)),
    _e("aqua-rat", "deepmind/aqua_rat", "raw", "letter", "math", norm_aqua, (5, 5), "train", "test",
       (97467, 254)),
    _e("arc-challenge", "allenai/ai2_arc", "ARC-Challenge", "letter", "science", norm_arc, (3, 5), "train",
       "test", (1119, 1172)),
    _e("gpqa-diamond", "Idavidrein/gpqa", "gpqa_diamond", "letter", "science", norm_gpqa, (4, 4), "train",
       None, (198, None)),
    _e("commonsenseqa", "tau/commonsense_qa", None, "letter", "commonsense", norm_commonsenseqa, (5, 5),
       "train", "validation", (9741, 1221)),
    _e("medqa", "GBaker/MedQA-USMLE-4-options", None, "letter", "medicine", norm_medqa, (4, 4), "train",
       "test", (10178, 1273)),
    _e("medmcqa", "openlifescienceai/medmcqa", None, "letter", "medicine", norm_medmcqa, (4, 4), "train",
       "validation", (182822, 4183)),
    _e("medexpqa", "HiTZ/MedExpQA", "en", "letter", "medicine", norm_medexpqa, (4, 5), "train", "test",
       (434, 125)),
    _e("mmlu-stem", "cais/mmlu", "stem", "letter", "science", norm_mmlu, (4, 4), "dev", "test", (45, 1274)),
    _e("mmlu-medical", "cais/mmlu", "medical", "letter", "medicine", norm_mmlu, (4, 4), "dev", "test",
       (35, 1417)),
    # OOD suites (evaluation only)
    _e("hellaswag", "Rowan/hellaswag", None, "letter", "ood-reasoning", norm_hellaswag, (4, 4), None,
       "validation"),
    _e("winogrande", "allenai/winogrande", "winogrande_xl", "letter", "ood-reasoning", norm_winogrande, (2, 2),
       None, "validation"),
    _e("piqa", "ybisk/piqa", None, "letter", "ood-reasoning", norm_piqa, (2, 2), None, "validation"),
    _e("arc-easy", "allenai/ai2_arc", "ARC-Easy", "letter", "ood-reasoning", norm_arc, (3, 5), None, "test"),
    _e("boolq", "google/boolq", None, "boolean", "ood-reasoning", norm_boolq, None, None, "validation"),
    _e("truthfulqa", "truthfulqa/truthful_qa", "multiple_choice", "letter", "ood-reasoning", norm_truthfulqa,
       (2, 26), None, "validation"),
    _e("mmlu-humanities", "cais/mmlu", "humanities", "letter", "ood-knowledge", norm_mmlu, (4, 4), None, "test"),
    _e("mmlu-social-sciences", "cais/mmlu", "social_sciences", "letter", "ood-knowledge", norm_mmlu, (4, 4),
       None, "test"),
    _e("mmlu-other", "cais/mmlu", "other", "letter", "ood-knowledge", norm_mmlu, (4, 4), None, "test"),
)}

_BY_SOURCE: dict[tuple[str, str | None], DatasetEntry] = {
    (e.hf_id.lower(), e.subset.lower() if e.subset else None): e for e in REGISTRY.values()
}


def lookup(name: str, source: str | None = None, subset: str | None = None) -> DatasetEntry | None:
    """The entry for a config dataset: by name, else by HF id (+ subset); None for custom data."""
    if name in REGISTRY:
        return REGISTRY[name]
    if source is None:
        return None
    key = source.lower()
    hit = _BY_SOURCE.get((key, subset.lower() if subset else None))
    if hit is None and key == "cais/mmlu":
        hit = REGISTRY["mmlu-stem"]  # any MMLU subset: same row format
    if hit is None:
        hit = next((e for (src, _), e in _BY_SOURCE.items() if src == key), None)
    return hit


def mmlu_subjects(subset: str | None) -> tuple[str, ...]:
    """A group name, one subject, or a comma-separated list of subjects."""
    if not subset:
        raise ValueError("cais/mmlu needs a subset: a group (" + ", ".join(MMLU_GROUPS) + ") or subject names")
    if subset in MMLU_GROUPS:
        return MMLU_GROUPS[subset]
    return tuple(s.strip() for s in subset.split(",") if s.strip())
