"""Base students: recipe keys, the fact corpus's no-leak rules, and a quick base build that learns its facts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compress_distill.miniworld import recipes as R
from compress_distill.miniworld.facts import FACT_KINDS, fact_documents, fact_probes
from compress_distill.miniworld.world import generate_questions, pool_size, prompt_text, split_of


def test_base_recipe_key_follows_the_pretraining_spec() -> None:
    base = R.default_recipes()["student-tiny-base"]
    assert isinstance(base, R.BaseStudentRecipe)
    key = R.recipe_key(base)
    changes = [
        base.model_copy(update={"corpus": base.corpus.model_copy(update={"n_docs": 999})}),
        base.model_copy(update={"corpus": base.corpus.model_copy(update={"seed": 12})}),
        base.model_copy(update={"corpus": base.corpus.model_copy(update={"facts_per_doc": 4})}),
        base.model_copy(update={"train": base.train.model_copy(update={"steps": 7})}),
        base.model_copy(update={"train": base.train.model_copy(update={"lr": 1e-4})}),
        base.model_copy(update={"init_seed": 6}),
    ]
    keys = {R.recipe_key(r) for r in changes}
    assert key not in keys and len(keys) == len(changes)
    # the random-init student of the same shape stays a different model
    assert key != R.recipe_key(R.default_recipes()["student-tiny"])
    assert R.model_key("mini:student-small-base") != key
    assert R.starts_from("mini:student-tiny-base") == ()  # pretrained from scratch, no built input


def test_fact_corpus_holds_no_question_and_no_held_out_number() -> None:
    docs = fact_documents(3000, 8, seed=R.FactCorpus().seed)
    text = " ".join(docs)
    # no question, option list, chat or trace format
    for banned in ("?", "What is", "Which", "Is ", "A)", "<think>", "</think>", "<|im_start|>", "answer", "option"):
        assert banned not in text, banned
    # every kind is there
    assert all(any(p in text for p in probe) for probe in (["+ ", "mod 10"], ["ones digit", "tens digit"],
                                                              ["last digit"], [" < ", "larger"], ["even", "odd"],
                                                              ["smaller of"], ["smallest of"]))
    # 3-4 digit numbers only from training par questions: none of the held-out ones appears
    big = {int(n) for n in re.findall(r"\b\d{3,4}\b", text)}
    assert big and all(split_of("par", f"Is {n} even?") == "train" for n in big)
    held_out = {int(re.findall(r"\d+", q["question"])[0]) for q in generate_questions("par", "test",
                                                                                       pool_size("par", "test"))}
    assert big.isdisjoint(held_out)
    # no fact about two two-digit numbers (the add / cmp mapping) and no 4-item minimum (a min question's options)
    assert not re.search(r"\b\d\d\b (?:[+<>]|and) \b\d\d\b", text)
    for items in re.findall(r"smallest of ([\d, and]+) is", text):
        assert len(re.findall(r"\d", items)) in (3, 5)
    # and no held-out question text of any domain
    for name in ("add", "cmp", "par", "min"):
        for q in generate_questions(name, "test", 50):
            assert prompt_text(q) not in text


def test_fact_probes_cover_every_kind() -> None:
    probes = fact_probes(5, seed=1)
    assert set(probes) == set(FACT_KINDS) and all(len(v) == 5 for v in probes.values())
    assert fact_probes(5, seed=1) == probes  # deterministic


def test_quick_base_student_learns_its_facts(tmp_path: Path) -> None:
    """The quick base build runs in CI time and its loss on fresh fact documents is below its random init's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress_distill.miniworld.build import build_models, fact_pairs, new_model
    from compress_distill.miniworld.train import _summed_loss, collate

    recipe = R.default_recipes(quick=True)["student-tiny-base"]
    assert isinstance(recipe, R.BaseStudentRecipe)
    paths = build_models(["student-tiny-base"], quick=True, threads=1, root=tmp_path)
    path = paths["student-tiny-base"]
    assert path == R.resolve_model("mini:student-tiny-base", tmp_path, quick=True)
    meta = json.loads((path / R.RECIPE_FILE).read_text())
    assert meta["build"]["train_secs"] < 60 and set(meta["build"]["fact_acc"]) == set(FACT_KINDS)
    tok = AutoTokenizer.from_pretrained(path)
    docs = fact_documents(64, recipe.corpus.facts_per_doc, seed=recipe.corpus.seed + 100)  # not the build's docs
    ids, mask, labels = collate(fact_pairs(tok, docs), tok.pad_token_id)
    n = int((labels[:, 1:] != -100).sum())

    def loss(model) -> float:
        with torch.no_grad():
            return float(_summed_loss(model.eval(), ids, mask, labels)) / n

    built = loss(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))
    init = loss(new_model(tok, recipe.shape, recipe.init_seed))
    assert built < init - 1.0, (built, init)


@pytest.mark.parametrize("ref", ["mini:student-tiny-base", "mini:student-small-base"])
def test_mini_config_trains_base_students(ref: str) -> None:
    from compress_distill.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "mini.yaml")
    assert ref in {s.model for s in cfg.students.values()}
