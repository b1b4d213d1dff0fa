"""Offline stand-ins for the study's students: the mini student's weights under a tokenizer per model family.

The real Qwen3.5 / Llama-3.1 / gpt-oss tokenizers live on the hub, which tests cannot reach. What
Axolotl's label masking depends on is the family's special tokens (each ONE id: Axolotl refuses an
eot token that encodes to several), bos/eos/pad, and the chat template, so a stand-in carries those
exactly, on top of the mini world's small byte-level BPE. The weights are the CI-sized mini student's
(its 400-row embedding is smaller than the stand-in's vocab): good for Axolotl's preprocessing, which
never loads them, not for training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

MINI_STUDENT = "mini-quick:student-tiny"
MINI_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0-2 of the mini tokenizer
THINK_TOKENS = ("<think>", "</think>")  # added (non-special) in the mini and Qwen tokenizers only

# gpt-oss's format (openai-harmony), written from its spec: a system header, user turns, and the final
# assistant turn as an analysis message (the trace, from `thinking`) then the final answer ending in
# <|return|>. Earlier assistant turns lose their analysis and end in <|end|>, as gpt-oss's own template
# does. tests/test_family_labels.py compares it with what openai-harmony renders.
HARMONY_SYSTEM = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
                  "Knowledge cutoff: 2024-06\n\nReasoning: medium\n\n"
                  "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>")
HARMONY_TEMPLATE = (
    "{{- " + json.dumps(HARMONY_SYSTEM) + " -}}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' or message.role == 'developer' -%}"
    "{{- '<|start|>developer<|message|># Instructions\\n\\n' + message.content + '<|end|>' -}}"
    "{%- elif message.role == 'user' -%}"
    "{{- '<|start|>user<|message|>' + message.content + '<|end|>' -}}"
    "{%- elif message.role == 'assistant' and loop.last and not add_generation_prompt -%}"
    "{%- if message.thinking is defined and message.thinking -%}"
    "{{- '<|start|>assistant<|channel|>analysis<|message|>' + message.thinking + '<|end|>' -}}"
    "{%- endif -%}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message.content + '<|return|>' -}}"
    "{%- elif message.role == 'assistant' -%}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message.content + '<|end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start|>assistant' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class StandIn:
    specials: tuple[str, ...]  # the first three take the mini's special ids, the rest are appended
    bos: str | None
    eos: str
    pad: str | None
    chat_template: str | None  # None: the tokenizer ships none (Llama-3.1 base)
    keep_think_tokens: bool
    prepend_bos: bool = False  # Llama-3's tokenizer adds <|begin_of_text|> to every encode


STANDINS: dict[str, StandIn] = {
    # Qwen base tokenizers: eos and pad <|endoftext|>, no bos. Axolotl's `qwen3_5` template replaces ours.
    "qwen3.5": StandIn(MINI_SPECIALS, None, "<|endoftext|>", "<|endoftext|>", "keep", True),
    # Llama-3.1 base: no chat template and no pad token (the study's config supplies both).
    "llama3": StandIn(("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                       "<|end_header_id|>", "<|finetune_right_pad_id|>"),
                      "<|begin_of_text|>", "<|end_of_text|>", None, None, False, prepend_bos=True),
    "gpt-oss": StandIn(("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>",
                        "<|start|>", "<|end|>", "<|message|>", "<|call|>"),
                       "<|startoftext|>", "<|return|>", "<|endoftext|>", HARMONY_TEMPLATE, False),
}


def mini_student_dir() -> Path:
    """The CI-sized mini student, built on first use (seconds; cached under models/mini-quick)."""
    from compress_distill.miniworld.build import build_models
    from compress_distill.serving import mini_ref, mini_root, resolve_model_dir

    name, quick = mini_ref(MINI_STUDENT) or (MINI_STUDENT, True)
    build_models([name.removeprefix("mini:")], quick=quick, root=mini_root(quick))
    return resolve_model_dir(MINI_STUDENT)


def _tokenizer(src: Path, spec: StandIn) -> PreTrainedTokenizerFast:
    data = json.loads((src / "tokenizer.json").read_text())
    # Rename the mini's specials in place (same ids), so no foreign special token (e.g. <|im_end|> in a
    # gpt-oss stand-in) is left one id: the real tokenizers split those into several pieces.
    renames = dict(zip(MINI_SPECIALS, spec.specials[:3], strict=True))
    vocab = data["model"]["vocab"]
    for old, new in renames.items():
        vocab[new] = vocab.pop(old)
    data["added_tokens"] = [
        {**t, "content": renames.get(t["content"], t["content"])} for t in data["added_tokens"]
        if spec.keep_think_tokens or t["content"] not in THINK_TOKENS]
    if spec.prepend_bos:
        data["post_processor"] = {"type": "Sequence", "processors": [data["post_processor"], {
            "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": spec.bos, "type_id": 0}},
                                                     {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": spec.bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {spec.bos: {"id": spec.bos, "ids": [vocab[spec.bos]], "tokens": [spec.bos]}}}]}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)))
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in spec.specials[3:]], special_tokens=True)
    tok.bos_token, tok.eos_token, tok.pad_token = spec.bos, spec.eos, spec.pad
    return tok


def standin_model(family: str, dest: Path) -> Path:
    """Write a model directory for `family` at `dest` (Axolotl `base_model` for preprocessing); returns it."""
    spec = STANDINS[family]
    src = mini_student_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(src / name, dest / name)
    tok = _tokenizer(src, spec)
    if spec.chat_template == "keep":
        tok.chat_template = (src / "chat_template.jinja").read_text()
    else:
        tok.chat_template = spec.chat_template
    tok.save_pretrained(dest)
    for special in spec.specials:  # the property Axolotl's eot handling relies on
        assert len(tok.encode(special, add_special_tokens=False)) == 1, (family, special)
    return dest


# openai-harmony loads the o200k vocab from TIKTOKEN_ENCODINGS_BASE (hash-checked) or downloads it from a host
# this workplace cannot reach. npm's js-tiktoken ships the same ranks in its own packing; unpacked back to
# tiktoken's line format they hash to harmony's expected sha256, so the file is the real one, not a lookalike.
O200K_FILE = "o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # harmony's expected_hash
JS_TIKTOKEN = "js-tiktoken@1.0.21"
O200K_CACHE = Path.home() / ".cache" / "compress-distill" / "tiktoken"


def _o200k_ok(path: Path) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == O200K_SHA256


def o200k_vocab_dir() -> Path | None:
    """A directory holding the verified o200k vocab (for TIKTOKEN_ENCODINGS_BASE), or None if none can be had."""
    for d in (os.environ.get("TIKTOKEN_ENCODINGS_BASE"), O200K_CACHE):
        if d and _o200k_ok(Path(d) / O200K_FILE):
            return Path(d)
    if shutil.which("npm") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run(["npm", "pack", JS_TIKTOKEN], cwd=tmp, capture_output=True, text=True, timeout=180)
        if res.returncode != 0:
            return None
        with tarfile.open(next(Path(tmp).glob("js-tiktoken-*.tgz"))) as tar:
            member = tar.extractfile("package/dist/ranks/o200k_base.cjs")
            assert member is not None
            text = member.read().decode()
    ranks = json.loads(text[text.index("{"):text.rindex("}") + 1])["bpe_ranks"]
    lines = []  # js-tiktoken packs "! OFFSET tok tok ..." per line; tiktoken wants "tok RANK" per token
    for packed in filter(None, ranks.split("\n")):
        _, offset, *tokens = packed.split(" ")
        lines += [f"{tok} {int(offset) + i}\n" for i, tok in enumerate(tokens)]
    O200K_CACHE.mkdir(parents=True, exist_ok=True)
    tmp_file = O200K_CACHE / f"{O200K_FILE}.tmp"
    tmp_file.write_text("".join(lines))
    if hashlib.sha256(tmp_file.read_bytes()).hexdigest() != O200K_SHA256:
        tmp_file.unlink()
        return None
    tmp_file.replace(O200K_CACHE / O200K_FILE)
    return O200K_CACHE
