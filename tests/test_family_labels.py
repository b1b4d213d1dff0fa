"""Do the traces and the end-of-turn token reach the trained labels, for each student family's real config?

The paper's students' Axolotl configs (configs/paper.yaml, CPU overlay) are run through
compress_distill/envchecks/check_axolotl_labels.py on offline stand-ins of the Qwen3.5, Llama-3.1 and gpt-oss tokenizers
(tests/family_standins.py: the families' special tokens and templates over the mini BPE). Negative
configs prove the check catches the defects it exists for. The gpt-oss stand-in's harmony template is
compared with what openai-harmony itself renders.

Needs `.venv-axolotl` (scripts/setup-axolotl.sh); CI sets COMPRESS_DISTILL_REQUIRE_AXOLOTL=1, where a
missing env fails instead of skipping. ~2.5 minutes on two cores: two check runs (Axolotl's import and
dataset save dominate).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from compress_distill.axolotl_config import cpu_overlay, dump_yaml, render_axolotl_config
from compress_distill.config import parse_config
from compress_distill.plan import build_plan

from .conftest import CONFIGS, REPO
from .family_standins import o200k_vocab_dir, standin_model

AXOLOTL_PY = REPO / ".venv-axolotl" / "bin" / "python"
SCRIPT = REPO / "compress_distill" / "envchecks" / "check_axolotl_labels.py"
_REQUIRED = os.environ.get("COMPRESS_DISTILL_REQUIRE_AXOLOTL") == "1"
needs_axolotl = pytest.mark.skipif(not AXOLOTL_PY.exists() and not _REQUIRED, reason=(
    f"{AXOLOTL_PY} missing: build it with `bash scripts/setup-axolotl.sh` (~7 min, 4.3 GB)"))

# family -> its paper student; the cell is that student's full-FT raw-trace cell under the Qwen teacher
STUDENTS = {"qwen3.5": "qwen3.5-0.8b", "llama3": "llama-3.1-8b", "gpt-oss": "gpt-oss-20b"}
ROWS = 5


def _write_rows(path: Path) -> None:
    """Training rows as traces/trainset.py writes them, each with its own 60+ character trace."""
    with path.open("w") as f:
        for i in range(ROWS):
            trace = f"Row {i}: restate the question, then add {i} and {i + 7} carefully, giving {2 * i + 7}."
            f.write(json.dumps({"id": f"r{i}", "messages": [
                {"role": "user", "content": f"What is {i} + {i + 7}?"},
                {"role": "assistant", "content": f"<think>{trace}</think>The answer is {2 * i + 7}."}]}) + "\n")


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> Axolotl YAML: each family's paper config on its stand-in, plus the broken variants."""
    root = tmp_path_factory.mktemp("family-labels")
    rows = root / "train.jsonl"
    _write_rows(rows)
    cfg = parse_config(yaml.safe_load((CONFIGS / "paper.yaml").read_text()), CONFIGS / "paper.yaml")
    plan = build_plan(cfg)
    base = {fam: render_axolotl_config(
        plan.nodes[f"train/qwen3.5-397b.{student}.full.raw"], dataset_path=rows, output_dir=root / "out" / fam,
        base_model=str(standin_model(fam, root / "models" / fam))) for fam, student in STUDENTS.items()}

    def write(name: str, family: str, **changes: Any) -> Path:
        axo = cpu_overlay(base[family])
        # small rows need no 16k context; one process: pool start-up costs more than 5 rows
        axo.update(sequence_len=2048, val_set_size=0, dataset_processes=1,
                   dataset_prepared_path=str(root / "prepared" / name), **changes)
        axo = {k: v for k, v in axo.items() if v is not None}  # a None change removes the key
        path = root / f"{name}.yaml"
        path.write_text(dump_yaml(axo))
        return path

    no_key = {k: v for k, v in base["gpt-oss"]["datasets"][0].items() if k != "template_thinking_key"}
    return {
        **{fam: write(fam, fam) for fam in STUDENTS},
        # Axolotl's built-in Llama-3 template (Instruct's) never renders reasoning_content
        "llama3-builtin-template": write("llama3-builtin-template", "llama3", chat_template="llama3",
                                         chat_template_jinja=None),
        # without the key, split_thinking fills reasoning_content, which harmony ignores
        "gpt-oss-reasoning-content": write("gpt-oss-reasoning-content", "gpt-oss", datasets=[no_key]),
        # H.3's literal EOT: not in these templates, so Axolotl drops it with a warning
        "llama3-im-end": write("llama3-im-end", "llama3", eot_tokens=["<|im_end|>"]),
        "gpt-oss-im-end": write("gpt-oss-im-end", "gpt-oss", eot_tokens=["<|im_end|>"]),
    }


def check(*paths: Path) -> tuple[int, dict[str, str], str]:
    """(exit code, config stem -> its PASS/FAIL line, all output) of one check_axolotl_labels.py run."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(AXOLOTL_PY), str(SCRIPT), *map(str, paths), "--rows", str(ROWS)],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = {}
    for line in proc.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("PASS", "FAIL"):
            lines[Path(rest.split(":", 1)[0]).stem] = line
    return proc.returncode, lines, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.axolotl
@needs_axolotl
def test_each_family_trains_its_traces_and_eot(configs: dict[str, Path]) -> None:
    rc, lines, out = check(*(configs[fam] for fam in STUDENTS))
    assert rc == 0, out
    for fam in STUDENTS:
        assert lines[fam].startswith("PASS"), out
        assert "in trained labels 100%; an EOT" in lines[fam] and "in trained labels 100% (5 rows)" in lines[fam]


@pytest.mark.slow
@pytest.mark.axolotl
@needs_axolotl
def test_check_catches_dropped_traces_and_eot(configs: dict[str, Path]) -> None:
    names = ["llama3-builtin-template", "gpt-oss-reasoning-content", "llama3-im-end", "gpt-oss-im-end"]
    rc, lines, out = check(*(configs[n] for n in names))
    assert rc == 1, out
    for name in ("llama3-builtin-template", "gpt-oss-reasoning-content"):
        assert lines[name].startswith("FAIL") and "in trained labels 0%; an EOT" in lines[name], out
    assert lines["llama3-im-end"].startswith("FAIL") and "in trained labels 0% (5 rows)" in lines["llama3-im-end"]
    # gpt-oss shrugs off the wrong EOT: Axolotl drops it (not in the template; no error, since that check
    # comes before the one-id check), and a single-turn row's labels are unchanged: the <|end|> closing the
    # analysis lies inside the assistant span and the final <|return|> is the eos.
    assert lines["gpt-oss-im-end"].startswith("PASS"), out


def test_gpt_oss_standin_renders_what_harmony_renders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vocab = o200k_vocab_dir()
    if vocab is None:
        pytest.skip("no o200k vocab: set TIKTOKEN_ENCODINGS_BASE to a folder with o200k_base.tiktoken, "
                    "or make npm reach its registry (tests/family_standins.py unpacks js-tiktoken's)")
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(vocab))
    from openai_harmony import (
        Conversation,
        DeveloperContent,
        HarmonyEncodingName,
        Message,
        RenderConversationConfig,
        Role,
        SystemContent,
        load_harmony_encoding,
    )
    from transformers import AutoTokenizer

    enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    tok = AutoTokenizer.from_pretrained(standin_model("gpt-oss", tmp_path / "gpt-oss"))
    chat = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "5"},
            {"role": "user", "content": "And 4 + 11?"},
            {"role": "assistant", "content": "The answer is 15.", "thinking": "Add 4 and 11:\n 15."}]
    harmony = [Message.from_role_and_content(Role.SYSTEM, SystemContent.new()),
               Message.from_role_and_content(Role.DEVELOPER, DeveloperContent.new().with_instructions("Answer briefly.")),
               Message.from_role_and_content(Role.USER, "What is 2 + 3?"),
               Message.from_role_and_content(Role.ASSISTANT, "5").with_channel("final"),
               Message.from_role_and_content(Role.USER, "And 4 + 11?"),
               Message.from_role_and_content(Role.ASSISTANT, "Add 4 and 11:\n 15.").with_channel("analysis"),
               Message.from_role_and_content(Role.ASSISTANT, "The answer is 15.").with_channel("final")]

    def body(text: Any) -> str:  # the system header carries dates and cutoffs that may differ
        return str(text)[str(text).index("<|start|>developer"):]

    # harmony drops analysis messages by default, also the last turn's: training on traces needs them kept
    want = enc.decode(enc.render_conversation_for_training(Conversation.from_messages(harmony),
                                                           RenderConversationConfig(auto_drop_analysis=False)))
    assert body(tok.apply_chat_template(chat, tokenize=False)) == body(want)
    want_prompt = enc.decode(enc.render_conversation_for_completion(Conversation.from_messages(harmony[:5]),
                                                                    Role.ASSISTANT))
    assert body(tok.apply_chat_template(chat[:4], tokenize=False, add_generation_prompt=True)) == body(want_prompt)
