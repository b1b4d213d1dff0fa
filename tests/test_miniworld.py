"""The mini world: question schema and splits, traces, tokenizer, recipe keys, shipped weights, quick build."""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import pytest
import yaml

from compress_distill.miniworld import recipes as R
from compress_distill.miniworld.measure import compressed_answer
from compress_distill.miniworld.traces import concise_trace, verbose_trace
from compress_distill.miniworld.world import (
    DOMAINS,
    LETTERS,
    _pool,
    assistant_text,
    compress_turn,
    generate_questions,
    parse_answer,
    prompt_text,
    question_id,
    think_of,
)

REPO = Path(__file__).resolve().parents[1]
FIELDS = {"id", "dataset", "domain", "question", "choices", "answer", "answer_type", "split"}


# ---------------------------------------------------------------- questions
@pytest.mark.parametrize("name", list(DOMAINS))
def test_train_and_test_are_disjoint(name: str) -> None:
    train, test = _pool(name, "train"), _pool(name, "test")
    assert len(test) >= 400 and len(train) >= 4000  # room for 2,000 train / 300 test rows
    assert not {prompt_text(q) for q in train} & {prompt_text(q) for q in test}
    assert not {q["id"] for q in train} & {q["id"] for q in test}
    # and for samples drawn with the same seed
    a = generate_questions(name, "train", 2000, seed=0)
    b = generate_questions(name, "test", 300, seed=0)
    assert not {prompt_text(q) for q in a} & {prompt_text(q) for q in b}


@pytest.mark.parametrize("name", list(DOMAINS))
def test_ids_are_stable_and_unique(name: str) -> None:
    first = generate_questions(name, "train", 300, seed=3)
    again = generate_questions(name, "train", 300, seed=3)
    assert first == again
    assert len({q["id"] for q in first}) == len(first)
    assert all(q["id"] == question_id(name, prompt_text(q)) for q in first)
    # a larger sample extends a smaller one; another seed draws another order of the same pool
    assert generate_questions(name, "train", 600, seed=3)[:300] == first
    assert generate_questions(name, "train", 300, seed=4) != first


def test_too_many_or_unknown_is_an_error() -> None:
    with pytest.raises(ValueError, match="distinct questions"):
        generate_questions("add", "test", 10_000)
    with pytest.raises(ValueError, match="known: add, cmp, par, min"):
        generate_questions("mc", "train", 1)
    with pytest.raises(ValueError, match="split"):
        generate_questions("add", "val", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(DOMAINS))
def test_schema_and_answers(name: str) -> None:
    spec = DOMAINS[name]
    for q in generate_questions(name, "test", 200, seed=1):
        assert set(q) == FIELDS
        assert (q["dataset"], q["domain"], q["answer_type"], q["split"]) == (name, spec.domain, spec.answer_type, "test")
        nums = [int(t) for t in q["question"].replace("?", " ").replace("(", " ").replace(")", " ").split() if t.isdigit()]
        if name == "add":
            assert q["answer"] == str((nums[0] + nums[1]) % 10) and q["choices"] is None
        elif name == "cmp":
            assert q["answer"] == str(max(nums)) and q["choices"] is None
        elif name == "par":
            even = nums[0] % 2 == 0
            assert q["answer"] == ("yes" if even else "no") and q["question"].endswith("even?")
        else:
            assert q["question"] == "Which option has the smallest number?"  # options only in `choices`
            assert q["choices"] is not None and len(q["choices"]) == 4
            vals = [int(c) for c in q["choices"]]
            assert q["answer"] in LETTERS and vals[LETTERS.index(q["answer"])] == min(vals)


@pytest.mark.parametrize("name", list(DOMAINS))
def test_candidates_are_the_answer_space(name: str) -> None:
    """The report's chance level is 1 / candidates: check that count against every test question."""
    pool = _pool(name, "test")
    spec = DOMAINS[name]
    if name == "add":  # every residue occurs, and nothing else
        assert {q["answer"] for q in pool} == {str(d) for d in range(spec.candidates)}
    elif name == "cmp":  # the answer is always one of the two numbers named
        assert all(q["question"].count(q["answer"]) >= 1 and len(q["question"].split(" or ")) == spec.candidates
                   for q in pool)
    elif name == "par":
        assert {q["answer"] for q in pool} == {"yes", "no"} and spec.candidates == 2
    else:
        assert all(len(q["choices"] or []) == spec.candidates for q in pool)


# ---------------------------------------------------------------- traces
@pytest.mark.parametrize("name", list(DOMAINS))
def test_traces_end_in_the_answer(name: str) -> None:
    rng = random.Random(0)
    wrong_answers = 0
    for q in generate_questions(name, "train", 200, seed=2):
        trace, ans = verbose_trace(q, rng)
        text = assistant_text(trace, ans)
        assert ans == q["answer"] and parse_answer(text) == q["answer"] and think_of(text) == trace
        assert "answer is" not in trace  # the only "The answer is" is the final one
        bad_trace, bad = verbose_trace(q, rng, wrong=True)
        assert bad != q["answer"] and compressed_answer(bad_trace, q["answer_type"]) == bad
        wrong_answers += 1
        for level in ("mild", "aggressive"):
            assert compressed_answer(concise_trace(q, level), q["answer_type"]) == q["answer"]  # type: ignore[arg-type]
    assert wrong_answers == 200


def test_traces_are_diverse() -> None:
    rng = random.Random(0)
    q = generate_questions("add", "train", 1)[0]
    assert len({verbose_trace(q, rng)[0] for _ in range(20)}) >= 10


def test_parse_answer_needs_a_closed_think_block() -> None:
    assert parse_answer("<think>x</think> The answer is 7.") == "7"
    assert parse_answer("<think>The answer is 3. The answer is 7.") is None  # unclosed: truncated
    assert parse_answer("<think>The answer is 3.</think> The answer is yes.") == "yes"
    assert parse_answer("") is None


def test_prompt_text_is_the_pipelines_rendering() -> None:
    """The teacher was trained on `prompt_text`; the pipeline prompts it with render_question."""
    schema = pytest.importorskip("compress_distill.datasets.schema")
    for name in DOMAINS:
        for q in generate_questions(name, "test", 5):
            assert prompt_text(q) == schema.render_question(q["question"], q["choices"])


def test_compress_turn_matches_the_mini_config_prompt() -> None:
    cfg = yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())
    for spec in cfg["compressors"].values():
        assert spec["prompt"].format(question="Q?", trace="T.") == compress_turn("Q?", "T.")


# ---------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tok():
    from compress_distill.miniworld.tokenizer import train_tokenizer

    return train_tokenizer(**{k: v for k, v in R.TokenizerRecipe().model_dump().items() if k != "corpus_per_domain"},
                           n_per_domain=R.TokenizerRecipe().corpus_per_domain)


def test_tokenizer_basics(tok) -> None:
    assert len(tok) == R.TokenizerRecipe().vocab_size
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    ids = tok("<think>47 + 38</think> The answer is 5.", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:1] == ["<think>"] and "</think>" in pieces and {"4", "7", "3", "8"} <= set(pieces)
    assert tok.decode(ids, skip_special_tokens=True) == "<think>47 + 38</think> The answer is 5."


def test_chat_template_masks_the_assistant_turn(tok) -> None:
    msgs = [{"role": "user", "content": "Is 12 even?"}, {"role": "assistant", "content": "<think>x</think> The answer is yes."}]
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(kept) == "<think>x</think> The answer is yes.<|im_end|>"
    split = [msgs[0], {"role": "assistant", "content": "The answer is yes.", "reasoning_content": "x"}]
    assert tok.apply_chat_template(split, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False)


def test_trace_token_lengths(tok) -> None:
    rng = random.Random(0)
    verbose, mild, aggressive = [], [], []
    for name in DOMAINS:
        for q in generate_questions(name, "train", 150, seed=1):
            trace, ans = verbose_trace(q, rng)
            verbose.append(len(tok(assistant_text(trace, ans))["input_ids"]))
            mild.append(len(tok(assistant_text(concise_trace(q, "mild"), ans))["input_ids"]))
            aggressive.append(len(tok(assistant_text(concise_trace(q, "aggressive"), ans))["input_ids"]))
    assert 85 <= statistics.median(verbose) <= 120 and max(verbose) <= 170
    assert 18 <= statistics.median(mild) <= 45
    assert statistics.median(aggressive) < statistics.median(mild)


# ---------------------------------------------------------------- recipes and keys
def test_recipe_key_identity_table() -> None:
    base = R.default_recipes()
    teacher = base["teacher"]
    assert isinstance(teacher, R.TeacherRecipe)
    assert R.recipe_key(teacher) == R.recipe_key(R.default_recipes()["teacher"])
    assert R.recipe_key(teacher) == R.recipe_key(R.TeacherRecipe.model_validate(teacher.model_dump()))
    changes = {
        "lr": teacher.model_copy(update={"train": teacher.train.model_copy(update={"lr": 1e-3})}),
        "steps": teacher.model_copy(update={"train": teacher.train.model_copy(update={"steps": 999})}),
        "error_rate": teacher.model_copy(update={"error_rate": 0.1}),
        "vocab": teacher.model_copy(update={"tokenizer": R.TokenizerRecipe(vocab_size=500)}),
        "hidden": teacher.model_copy(update={"shape": R.Shape(hidden=96, layers=4)}),
    }
    keys = {name: R.recipe_key(r) for name, r in changes.items()}
    assert R.recipe_key(teacher) not in keys.values() and len(set(keys.values())) == len(keys)
    comp = base["compressor-mild"]
    assert isinstance(comp, R.CompressorRecipe)
    # the upstream teacher is identity of the compressor
    assert R.recipe_key(comp) != R.recipe_key(comp.model_copy(update={"teacher": changes["lr"]}))
    assert R.recipe_key(comp) != R.recipe_key(base["compressor-aggressive"])
    assert R.recipe_key(base["student-tiny"]) != R.recipe_key(base["student-small"])
    assert {R.recipe_key(r) for r in R.default_recipes(quick=True).values()}.isdisjoint(
        R.recipe_key(r) for r in base.values())


def test_recipe_key_includes_build_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = R.recipe_key(R.default_recipes()["teacher"])
    monkeypatch.setattr(R, "BUILD_VERSION", R.BUILD_VERSION + "x")
    assert R.recipe_key(R.default_recipes()["teacher"]) != before


def test_key_does_not_depend_on_the_root(tmp_path: Path) -> None:
    for root in (tmp_path / "a", tmp_path / "b" / "c"):
        (root / R.dir_name("teacher", R.default_recipes()["teacher"])).mkdir(parents=True)
        (root / R.dir_name("teacher", R.default_recipes()["teacher"]) / R.RECIPE_FILE).write_text("{}")
    a = R.resolve_model("mini:teacher", tmp_path / "a")
    b = R.resolve_model("mini:teacher", tmp_path / "b" / "c")
    assert a.name == b.name and a != b


def test_resolve_model_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `compress-distill build-models`"):
        R.resolve_model("mini:teacher", tmp_path)
    with pytest.raises(ValueError, match="valid: mini:teacher"):
        R.resolve_model("mini:oracle", tmp_path)
    with pytest.raises(ValueError):
        R.resolve_model("teacher", tmp_path)
    with pytest.raises(ValueError):
        R.TeacherRecipe(tokenizer=R.TokenizerRecipe(), shape=R.Shape(hidden=64, layers=2),
                        train=R.TrainSpec(steps=10), unknown_field=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", R.MODEL_NAMES)
def test_shipped_weights_match_their_recipe(name: str) -> None:
    """models/mini holds a build of the CURRENT recipe: change a recipe and this fails until rebuilt."""
    recipe = R.default_recipes()[name]
    path = R.resolve_model(f"mini:{name}")
    assert path.parent == R.DEFAULT_ROOT and path.name == f"{name}-{R.recipe_key(recipe)}"
    meta = json.loads((path / R.RECIPE_FILE).read_text())
    assert meta["key"] == R.recipe_key(recipe) and meta["build_version"] == R.BUILD_VERSION
    assert meta["recipe"] == recipe.model_dump(mode="json")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (path / f).is_file()
    assert (path / "model.safetensors").stat().st_size < 5_000_000
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen3"


# ---------------------------------------------------------------- the build path
@pytest.mark.slow
def test_quick_build(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress_distill.miniworld.build import build_models
    from compress_distill.miniworld.measure import generate
    from compress_distill.miniworld.world import chat_prompt

    t0 = time.perf_counter()
    # one thread: on a shared 2-core box two OpenMP threads spin and run ~7x slower per step
    paths = build_models(quick=True, threads=1, root=tmp_path)
    took = time.perf_counter() - t0
    assert took <= 120, f"quick build took {took:.0f}s"
    assert set(paths) == set(R.MODEL_NAMES)
    for name, path in paths.items():
        assert path == R.resolve_model(f"mini:{name}", tmp_path, quick=True)
        meta = json.loads((path / R.RECIPE_FILE).read_text())
        assert meta["key"] == R.recipe_key(R.default_recipes(quick=True)[name])
    assert not (tmp_path / ".tmp").exists()  # every temp dir was renamed into place
    t1 = time.perf_counter()
    assert build_models(quick=True, root=tmp_path) == paths  # cache hit
    assert time.perf_counter() - t1 < 5
    model = AutoModelForCausalLM.from_pretrained(paths["teacher"])
    tok = AutoTokenizer.from_pretrained(paths["teacher"])
    assert model.dtype == torch.float32
    assert model.generation_config.do_sample and model.generation_config.temperature == 0.7  # served teacher samples
    out = generate(model, tok, [chat_prompt("Is 12 even?")], max_new=5)
    assert isinstance(out[0], str)


def test_build_models_cli_caches_and_force_rebuilds(tmp_path: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "compress_distill.cli", "build-models", *args],
                              capture_output=True, text=True, timeout=300)

    bad = cli("student-huge", "--quick", "--root", str(tmp_path))
    assert bad.returncode == 2 and "student-huge" in bad.stderr
    first = cli("student-tiny", "--quick", "--root", str(tmp_path))
    assert first.returncode == 0, first.stderr[-2000:]
    (built,) = [p for p in tmp_path.glob("student-tiny-*")]
    stamp = (built / "recipe.json").stat().st_mtime_ns
    again = cli("student-tiny", "--quick", "--root", str(tmp_path))
    assert again.returncode == 0 and (built / "recipe.json").stat().st_mtime_ns == stamp  # cached
    forced = cli("student-tiny", "--quick", "--root", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert [p.name for p in tmp_path.glob("student-tiny-*")] == [built.name]  # same key, rebuilt in place
    assert (built / "recipe.json").stat().st_mtime_ns != stamp
    assert not list(tmp_path.glob(".rebuild-*")) and not list(tmp_path.glob(".old-*"))
