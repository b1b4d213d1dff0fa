"""Build the mini world's models as a keyed, cached step: tokenizer, teacher, two compressors, student
inits (random) and base students (pretrained on plain facts, `facts.py`).

Each model is written to `<root>/.tmp/<name>-<key>.<uuid>/` and renamed to
`<root>/<name>-<key>/` once complete, with `recipe.json` (key, recipe, build stats)
inside; an existing directory under the final name is a cache hit and is skipped.
The repo ships the full build in `models/mini/`, so the main command finds it cached;
`build_models(quick=True, root=tmp)` proves the same path in about a minute.

    python -m compress_distill.miniworld.build [--quick] [--root DIR] [--threads 2] [names...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from compress_distill.miniworld.facts import fact_documents, fact_probes
from compress_distill.miniworld.measure import compressor_stats, fact_accuracy, teacher_accuracy
from compress_distill.miniworld.recipes import (
    BUILD_VERSION,
    DEFAULT_ROOT,
    MODEL_NAMES,
    RECIPE_FILE,
    BaseStudentRecipe,
    CompressorRecipe,
    Recipe,
    Shape,
    StudentRecipe,
    TeacherRecipe,
    TokenizerRecipe,
    default_recipes,
    dir_name,
    recipe_key,
    resolve_model,
)
from compress_distill.miniworld.tokenizer import MAX_LEN, train_tokenizer
from compress_distill.miniworld.traces import concise_trace, verbose_trace
from compress_distill.miniworld.train import Pair, Stream, encode_pairs, train_lm
from compress_distill.miniworld.world import (
    assistant_text,
    chat_prompt,
    compress_turn,
    generate_questions,
    prompt_text,
    user_turn,
)

__all__ = ["build_models", "recipe_key", "resolve_model"]
log = logging.getLogger(__name__)

# `transformers serve` samples only when the model's generation_config has do_sample=True
# (a request's temperature alone is ignored; temperature 0 still means greedy), so the
# served teacher and compressors default to sampling at the paper's temperatures.
SAMPLING_DEFAULTS = {"teacher": 0.7, "compressor": 0.3}


def new_model(tok: PreTrainedTokenizerBase, shape: Shape, seed: int) -> Qwen3ForCausalLM:
    """A random-init Qwen3 causal LM (model_type qwen3, so servers apply the qwen3 reasoning split)."""
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tok), hidden_size=shape.hidden, intermediate_size=shape.mlp_mult * shape.hidden,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.hidden // shape.heads, max_position_embeddings=MAX_LEN, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def set_sampling_defaults(model: PreTrainedModel, kind: str) -> None:
    """Make a served model sample by default (see SAMPLING_DEFAULTS); students stay greedy."""
    if kind in SAMPLING_DEFAULTS:
        model.generation_config.update(do_sample=True, temperature=SAMPLING_DEFAULTS[kind], top_k=0, top_p=1.0)


def _commit(root: Path, name: str, recipe: Recipe | TokenizerRecipe, write: Callable[[Path], dict]) -> Path:
    """Run `write(tmp_dir)` unless cached, then add recipe.json and rename into place atomically."""
    final = root / dir_name(name, recipe)
    if (final / RECIPE_FILE).is_file():
        log.info("%s: cached at %s", name, final)
        return final
    tmp = root / ".tmp" / f"{final.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    stats = write(tmp)
    meta = {"name": name, "key": recipe_key(recipe), "build_version": BUILD_VERSION,
            "recipe": recipe.model_dump(mode="json"),
            "build": {**stats, "build_secs": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "transformers": transformers.__version__}}
    (tmp / RECIPE_FILE).write_text(json.dumps(meta, indent=1) + "\n")  # last: the done marker
    try:
        os.rename(tmp, final)
    except OSError:  # another builder won the race; its copy is equivalent
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: built %s", name, final)
    return final


def _copy_tokenizer(tok_dir: Path, dest: Path) -> None:
    """Ship the tokenizer files byte-identical to the tokenizer step's (an in-memory tokenizer that
    has padded a batch would persist that padding state)."""
    for f in tok_dir.iterdir():
        if f.name != RECIPE_FILE:
            shutil.copy2(f, dest / f.name)


def build_tokenizer(recipe: TokenizerRecipe, root: Path) -> Path:
    def write(tmp: Path) -> dict:
        tok = train_tokenizer(recipe.vocab_size, recipe.corpus_per_domain, recipe.seed)
        tok.save_pretrained(tmp)
        return {"vocab": len(tok)}
    return _commit(root, "tokenizer", recipe, write)


def _eval_questions(domains: tuple[str, ...], per: int) -> list:
    return [q for d in domains for q in generate_questions(d, "test", per, seed=7)]


def _teacher(recipe: TeacherRecipe, tok_dir: Path, quick: bool) -> Callable[[Path], dict]:
    def write(tmp: Path) -> dict:
        tok = AutoTokenizer.from_pretrained(tok_dir)
        rng = random.Random(recipe.data_seed)
        qs = [q for d in recipe.domains for q in generate_questions(d, "train", recipe.n_train_per_domain,
                                                                     seed=recipe.data_seed)]
        v_prompts, v_targets, wrong = [], [], 0
        for q in qs * recipe.traces_per_question:
            is_wrong = rng.random() < recipe.error_rate
            trace, ans = verbose_trace(q, rng, wrong=is_wrong)
            wrong += is_wrong
            # Half the verbose prompts carry the explicit tag: a plain question and "Style: verbose" agree.
            v_prompts.append(chat_prompt(user_turn(prompt_text(q), rng.choice(["plain", "verbose"]))))
            v_targets.append(assistant_text(trace, ans))
        c_prompts = [chat_prompt(user_turn(prompt_text(q), "concise")) for q in qs]
        c_targets = [assistant_text(concise_trace(q, "mild"), q["answer"]) for q in qs]
        n_verbose = recipe.verbose_per_batch
        streams = [Stream(encode_pairs(tok, v_prompts, v_targets), n_verbose),
                   Stream(encode_pairs(tok, c_prompts, c_targets), recipe.train.batch_size - n_verbose)]
        model = new_model(tok, recipe.shape, recipe.init_seed)
        stats = train_lm(model, streams, recipe.train, tok.pad_token_id, name="teacher")
        ev = _eval_questions(recipe.domains, 1 if quick else 40)
        stats["eval_greedy"] = teacher_accuracy(model, tok, ev, max_new=24 if quick else 200)
        if not quick:
            stats["eval_t0.7"] = teacher_accuracy(model, tok, ev, temperature=0.7, seed=1)
        log.info("teacher eval %s", {k: v for k, v in stats.items() if k.startswith("eval")})
        stats.update(params=sum(p.numel() for p in model.parameters()), wrong_traces=wrong,
                     verbose_examples=len(v_targets), questions=len(qs))
        set_sampling_defaults(model, recipe.kind)
        model.save_pretrained(tmp)
        _copy_tokenizer(tok_dir, tmp)
        return stats
    return write


def _compressor(recipe: CompressorRecipe, teacher_dir: Path, tok_dir: Path, quick: bool) -> Callable[[Path], dict]:
    def write(tmp: Path) -> dict:
        tok = AutoTokenizer.from_pretrained(tok_dir)
        model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)  # the concise mode is the init
        rng = random.Random(recipe.data_seed)
        domains = recipe.teacher.domains
        qs = [q for d in domains for q in generate_questions(d, "train", recipe.n_train_per_domain,
                                                              seed=recipe.data_seed)]
        prompts = [chat_prompt(compress_turn(prompt_text(q), verbose_trace(q, rng)[0])) for q in qs]
        targets = [concise_trace(q, recipe.level) for q in qs]  # plain text: the stage re-appends the answer
        stream = Stream(encode_pairs(tok, prompts, targets), recipe.train.batch_size)
        stats = train_lm(model, [stream], recipe.train, tok.pad_token_id, name=f"compressor-{recipe.level}")
        stats["eval"] = compressor_stats(model, tok, _eval_questions(domains, 1 if quick else 40),
                                         max_new=24 if quick else 96)
        log.info("compressor-%s eval %s", recipe.level, stats["eval"])
        stats.update(params=sum(p.numel() for p in model.parameters()), examples=len(qs))
        set_sampling_defaults(model, recipe.kind)
        model.save_pretrained(tmp)
        _copy_tokenizer(tok_dir, tmp)
        return stats
    return write


def _student(recipe: StudentRecipe, tok_dir: Path) -> Callable[[Path], dict]:
    def write(tmp: Path) -> dict:
        tok = AutoTokenizer.from_pretrained(tok_dir)
        model = new_model(tok, recipe.shape, recipe.init_seed)
        model.save_pretrained(tmp)
        _copy_tokenizer(tok_dir, tmp)
        return {"params": sum(p.numel() for p in model.parameters())}
    return write


def fact_pairs(tok: PreTrainedTokenizerBase, docs: list[str]) -> list[Pair]:
    """Plain-text documents as (prompt, target) pairs: the document-start token, then the whole
    document (loss on every token of it) closed by the same token, as a Base model reads text."""
    sep = tok.pad_token_id  # <|endoftext|>: never eos (<|im_end|>), which a base model should not know
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    return [([sep], d + [sep]) for d in ids]


def _base_student(recipe: BaseStudentRecipe, tok_dir: Path, quick: bool) -> Callable[[Path], dict]:
    def write(tmp: Path) -> dict:
        tok = AutoTokenizer.from_pretrained(tok_dir)
        model = new_model(tok, recipe.shape, recipe.init_seed)
        probes = fact_probes(10 if quick else 100, seed=recipe.corpus.seed + 1)
        before = fact_accuracy(model, tok, probes)
        docs = fact_documents(recipe.corpus.n_docs, recipe.corpus.facts_per_doc, recipe.corpus.seed)
        stream = Stream(fact_pairs(tok, docs), recipe.train.batch_size)
        stats = train_lm(model, [stream], recipe.train, tok.pad_token_id, name="base-student")
        stats["fact_acc_init"] = before
        stats["fact_acc"] = fact_accuracy(model, tok, probes)
        log.info("base student facts: %s (random init: %s)", stats["fact_acc"], before)
        stats.update(params=sum(p.numel() for p in model.parameters()), documents=len(docs))
        model.save_pretrained(tmp)
        _copy_tokenizer(tok_dir, tmp)
        return stats
    return write


def build_models(names: list[str] | None = None, quick: bool = False, threads: int = 2,
                 root: Path | str | None = None) -> dict[str, Path]:
    """Build (or find cached) the named models and whatever they start from. Returns name -> directory."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    wanted = list(names or MODEL_NAMES)
    unknown = sorted(set(wanted) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"unknown mini model(s) {unknown}; valid: {', '.join(MODEL_NAMES)}")
    if any(n.startswith("compressor") for n in wanted) and "teacher" not in wanted:
        wanted.insert(0, "teacher")  # compressors start from the teacher's weights
    recipes = default_recipes(quick)
    root.mkdir(parents=True, exist_ok=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, Path] = {}
    try:
        for name in MODEL_NAMES:  # dependency order: teacher before compressors
            if name not in wanted:
                continue
            recipe = recipes[name]
            if isinstance(recipe, TeacherRecipe):
                write = _teacher(recipe, build_tokenizer(recipe.tokenizer, root), quick)
            elif isinstance(recipe, CompressorRecipe):
                write = _compressor(recipe, out["teacher"], build_tokenizer(recipe.teacher.tokenizer, root), quick)
            elif isinstance(recipe, BaseStudentRecipe):
                write = _base_student(recipe, build_tokenizer(recipe.tokenizer, root), quick)
            else:
                write = _student(recipe, build_tokenizer(recipe.tokenizer, root))
            out[name] = _commit(root, name, recipe, write)
    finally:
        torch.set_num_threads(prev_threads)
        with contextlib.suppress(OSError):  # only when empty: a crashed build's debris stays visible
            (root / ".tmp").rmdir()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the mini world's models (cached by recipe key).")
    ap.add_argument("names", nargs="*", help=f"subset of {', '.join(MODEL_NAMES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="tiny CI recipes (use with --root)")
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()
    paths = build_models(a.names or None, quick=a.quick, threads=a.threads, root=a.root)
    log.info("built %s in %.0fs", {k: str(v) for k, v in paths.items()}, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
