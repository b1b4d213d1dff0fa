"""Frozen build recipes for the mini world's models, their cache keys, and `resolve_model`.

A recipe holds everything that decides a model's weights: tokenizer, shape,
training data mix, error rate, optimiser schedule, seeds, and (for a compressor)
the whole recipe of the teacher it starts from. Its key is the sha256 of the
recipe's canonical JSON plus BUILD_VERSION; paths, thread counts and timestamps
never enter it, so moving `models/mini` keeps every key.

A built model lives in `<root>/<name>-<key>/` next to a `recipe.json` carrying the
key and the recipe. `resolve_model("mini:teacher")` finds the directory of the
CURRENT recipe: after a recipe change the old directory is simply not found.
This module imports no torch, so planning code can resolve models cheaply.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..cluster.paths import models_dir

# Bump when build code changes the weights a recipe produces (not for comment-only edits).
BUILD_VERSION = "1"
KEY_LEN = 16
RECIPE_FILE = "recipe.json"
REF_PREFIX = "mini:"
DEFAULT_ROOT = models_dir() / "mini"  # cluster/paths.py: the checkout's models/, else a user cache


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenizerRecipe(Frozen):
    vocab_size: int = Field(600, ge=300)
    corpus_per_domain: int = Field(1000, ge=10)
    seed: int = 0


class Shape(Frozen):
    """A Qwen3 decoder: tied embeddings, GQA, MLP width = mlp_mult x hidden."""

    hidden: int = Field(ge=16)
    layers: int = Field(ge=1)
    heads: int = 4
    kv_heads: int = 2
    mlp_mult: int = 3


class TrainSpec(Frozen):
    """AdamW, linear warmup then cosine down to min_lr_frac x lr, gradient clipping."""

    steps: int = Field(ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup: int = Field(50, ge=0)
    min_lr_frac: float = Field(0.05, ge=0, le=1)
    clip: float = Field(1.0, gt=0)
    weight_decay: float = 0.0
    seed: int = 0


class TeacherRecipe(Frozen):
    """Style-tagged multi-task teacher: verbose by default, concise on `Style: concise`."""

    kind: Literal["teacher"] = "teacher"
    tokenizer: TokenizerRecipe
    shape: Shape
    train: TrainSpec
    domains: tuple[str, ...] = ("add", "cmp", "par", "min")
    n_train_per_domain: int = Field(4000, ge=1)
    traces_per_question: int = Field(2, ge=1)  # fresh verbose wordings of the same question
    # The rest of each batch is concise. Measured: at 10 of 32 (70/30) the verbose mode was still
    # at .39 greedy after 1,500 steps; at 16 of 32 it crossed the learning transition by ~1,000.
    verbose_per_batch: int = Field(16, ge=1)
    # Fraction of verbose training traces with one mistake and a wrong final answer. Measured: 0.3
    # gave .87 greedy but .67 per round at T=0.7; 0.25 aims at ~.7-.8 per round.
    error_rate: float = Field(0.25, ge=0, lt=1)
    init_seed: int = 0
    data_seed: int = 0


class CompressorRecipe(Frozen):
    """`Compress: <question> || <verbose trace>` -> a `level` rewrite, initialised from the teacher."""

    kind: Literal["compressor"] = "compressor"
    teacher: TeacherRecipe
    level: Literal["mild", "aggressive"]
    train: TrainSpec
    n_train_per_domain: int = Field(2000, ge=1)
    data_seed: int = 1


class StudentRecipe(Frozen):
    """An untrained student: random initial weights plus the shared tokenizer."""

    kind: Literal["student"] = "student"
    tokenizer: TokenizerRecipe
    shape: Shape
    init_seed: int = 0


class FactCorpus(Frozen):
    """The base students' pretraining documents (`facts.fact_documents`): plain facts, no questions."""

    n_docs: int = Field(20000, ge=1)
    facts_per_doc: int = Field(8, ge=1)
    seed: int = 11  # the teacher's data seed is 0, the compressors' 1: distinct streams


class BaseStudentRecipe(Frozen):
    """A Base student: the student's shape, pretrained on the world's facts in plain notation.

    It KNOWS the single-digit tables (sums, mod 10, order, parity, the smaller of two), which
    digit of a number is its ones / tens / last digit, and the smallest of 3 or 5 digits.
    It does NOT know the questions, the chat template, the `<think>` trace format, or the
    reasoning that joins the facts into an answer (ones digits decide a sum mod 10, tens then
    ones decide a comparison, the last digit decides parity, a letter names the smallest
    option's position); distillation must teach that. No document holds a question or its
    answer mapping, and no held-out question's numbers appear (see `facts.py` for how).
    """

    kind: Literal["base_student"] = "base_student"
    tokenizer: TokenizerRecipe
    shape: Shape
    corpus: FactCorpus
    train: TrainSpec
    init_seed: int = 0


Recipe = TeacherRecipe | CompressorRecipe | StudentRecipe | BaseStudentRecipe
MODEL_NAMES = ("teacher", "compressor-mild", "compressor-aggressive", "student-tiny", "student-small",
               "student-tiny-base", "student-small-base")


def default_recipes(quick: bool = False) -> dict[str, Recipe]:
    """The shipped recipes, or CI-sized ones (`quick`) that prove the build path in about a minute."""
    if quick:
        tok = TokenizerRecipe(vocab_size=400, corpus_per_domain=50)
        teacher = TeacherRecipe(tokenizer=tok, shape=Shape(hidden=32, layers=1),
                                train=TrainSpec(steps=20, batch_size=8, warmup=5),
                                n_train_per_domain=60, traces_per_question=1, verbose_per_batch=3)
        comp = TrainSpec(steps=5, batch_size=8, lr=1e-3, warmup=2)
        comp_n = 30
        facts, pretrain = FactCorpus(n_docs=200), TrainSpec(steps=30, batch_size=16, warmup=5)
    else:
        tok = TokenizerRecipe()
        teacher = TeacherRecipe(tokenizer=tok, shape=Shape(hidden=128, layers=4), train=TrainSpec(steps=1800))
        comp = TrainSpec(steps=400, lr=1e-3, warmup=10)
        comp_n = 2000
        facts, pretrain = FactCorpus(), TrainSpec(steps=800, batch_size=32, lr=3e-3)
    tiny, small = Shape(hidden=96, layers=3), Shape(hidden=128, layers=4)
    return {
        "teacher": teacher,
        "compressor-mild": CompressorRecipe(teacher=teacher, level="mild", train=comp, n_train_per_domain=comp_n),
        "compressor-aggressive": CompressorRecipe(teacher=teacher, level="aggressive", train=comp,
                                                  n_train_per_domain=comp_n),
        "student-tiny": StudentRecipe(tokenizer=tok, shape=tiny, init_seed=5),
        "student-small": StudentRecipe(tokenizer=tok, shape=small, init_seed=5),
        "student-tiny-base": BaseStudentRecipe(tokenizer=tok, shape=tiny, corpus=facts, train=pretrain, init_seed=5),
        "student-small-base": BaseStudentRecipe(tokenizer=tok, shape=small, corpus=facts, train=pretrain, init_seed=5),
    }


def _digest(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LEN]


def recipe_key(recipe: Recipe | TokenizerRecipe) -> str:
    """Content key of a recipe: its canonical JSON plus the build code version, nothing else."""
    return _digest({"build_version": BUILD_VERSION, "recipe": recipe.model_dump(mode="json")})


def dir_name(name: str, recipe: Recipe | TokenizerRecipe) -> str:
    return f"{name}-{recipe_key(recipe)}"


def parse_ref(ref: str) -> str:
    """'mini:teacher' -> 'teacher'; anything else is an error naming the valid refs."""
    name = ref.removeprefix(REF_PREFIX)
    if not ref.startswith(REF_PREFIX) or name not in MODEL_NAMES:
        valid = ", ".join(REF_PREFIX + n for n in MODEL_NAMES)
        raise ValueError(f"unknown mini model {ref!r}; valid: {valid}")
    return name


def model_key(ref: str, quick: bool = False) -> str:
    """The key of the current recipe behind a ref: hash this, never the resolved path."""
    return recipe_key(default_recipes(quick)[parse_ref(ref)])


def starts_from(ref: str, quick: bool = False) -> tuple[str, ...]:
    """The refs whose built weights the build of `ref` reads: a compressor's recipe names the teacher
    it is initialised from, so the teacher is built first (two builds of it at once would race)."""
    recipe = default_recipes(quick)[parse_ref(ref)]
    return (REF_PREFIX + "teacher",) if isinstance(recipe, CompressorRecipe) else ()


def resolve_model(ref: str, root: Path | str = DEFAULT_ROOT, quick: bool = False) -> Path:
    """The directory holding the model built from the CURRENT recipe of `ref` (e.g. 'mini:teacher')."""
    name = parse_ref(ref)
    path = Path(root) / dir_name(name, default_recipes(quick)[name])
    if not (path / RECIPE_FILE).is_file():
        raise FileNotFoundError(
            f"{ref}: no model built from its current recipe at {path}; "
            f"run `compress-distill build-models`{' --quick' if quick else ''} to build it"
        )
    return path
