"""Config loading: every shipped YAML loads; bad input gets a clear error naming file and field."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from compress_distill.config import ConfigError, load_config

from .conftest import CONFIGS


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.grid
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), "each config opens with a comment saying how it is used"


def _write(tmp_path: Path, data: object, name: str = "study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture
def paper() -> dict:
    return yaml.safe_load((CONFIGS / "paper.yaml").read_text())


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nteachers: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "malformed YAML" in msg and "line" in msg


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, [1, 2]))


def test_unknown_key_is_an_error_with_its_path(tmp_path: Path, paper: dict) -> None:
    paper["methods"]["lora"]["lora"]["rnak"] = 64
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, paper))
    msg = str(e.value)
    assert "methods.lora.lora.rnak" in msg and "unknown key" in msg and "study.yaml" in msg


def test_unknown_top_level_key(tmp_path: Path, paper: dict) -> None:
    paper["studnets"] = {}
    with pytest.raises(ConfigError, match=r"studnets: unknown key"):
        load_config(_write(tmp_path, paper))


def test_wrong_type_names_field(tmp_path: Path, paper: dict) -> None:
    paper["training"]["sequence_len"] = "long"
    with pytest.raises(ConfigError, match=r"training\.sequence_len"):
        load_config(_write(tmp_path, paper))


def test_bad_literal_lists_allowed_values(tmp_path: Path, paper: dict) -> None:
    paper["methods"]["lora"]["kind"] = "qlora"
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, paper))
    msg = str(e.value)
    assert "methods.lora.kind" in msg and "'lora'" in msg and "'full'" in msg and "qlora" in msg


def test_impossible_gpu_count(tmp_path: Path, paper: dict) -> None:
    paper["students"]["qwen3.5-9b"]["gpus"] = 16
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, paper))
    msg = str(e.value)
    assert "students.qwen3.5-9b.gpus = 16" in msg and "gpus_per_node is 8" in msg


def test_impossible_serving_layout(tmp_path: Path, paper: dict) -> None:
    paper["compressors"]["llama70b"]["serve"]["data_parallel"] = 4  # 4 x 4 = 16 > 8
    with pytest.raises(ConfigError, match="16 GPUs"):
        load_config(_write(tmp_path, paper))


def test_unknown_grid_reference_lists_allowed(tmp_path: Path, paper: dict) -> None:
    paper["grid"][0]["students"].append("qwen-7b")
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, paper))
    msg = str(e.value)
    assert "grid[0] (qwen-main).students" in msg and "'qwen-7b'" in msg and "qwen3.5-9b" in msg


def test_data_source_needs_compressor(tmp_path: Path, paper: dict) -> None:
    paper["data_sources"]["llama70b"].pop("compressor")
    with pytest.raises(ConfigError, match="needs 'compressor'"):
        load_config(_write(tmp_path, paper))


def test_prefix_fraction_bounds(tmp_path: Path, paper: dict) -> None:
    paper["data_sources"]["prefix50"]["fraction"] = 1.5
    with pytest.raises(ConfigError, match=r"data_sources\.prefix50\.fraction"):
        load_config(_write(tmp_path, paper))


def test_compress_prompt_needs_slots(tmp_path: Path, paper: dict) -> None:
    paper["compressors"]["llama70b"]["prompt"] = "shorten this"
    with pytest.raises(ConfigError, match=r"\{question\}"):
        load_config(_write(tmp_path, paper))


def test_bad_time_limit(tmp_path: Path, paper: dict) -> None:
    paper["cluster"]["jobs"]["train"]["time_limit"] = "12 hours"
    with pytest.raises(ConfigError, match="time_limit"):
        load_config(_write(tmp_path, paper))


def test_names_must_be_path_safe(tmp_path: Path, paper: dict) -> None:
    paper["students"]["../evil"] = paper["students"]["qwen3.5-9b"]
    with pytest.raises(ConfigError, match="must match"):
        load_config(_write(tmp_path, paper))


def test_lora_block_required_for_lora(tmp_path: Path, paper: dict) -> None:
    paper["methods"]["lora"].pop("lora")
    with pytest.raises(ConfigError, match="needs a 'lora' block"):
        load_config(_write(tmp_path, paper))


def test_reasoning_effort_is_a_request_field_not_a_system_prompt(tmp_path: Path, paper: dict) -> None:
    """vLLM's harmony path ignores a "Reasoning: high" system prompt; the config refuses it and names the field."""
    assert load_config(CONFIGS / "paper.yaml").teachers["gpt-oss-120b"].sampling.reasoning_effort == "high"
    paper["teachers"]["gpt-oss-120b"]["system_prompt"] = "Reasoning: high"
    with pytest.raises(ConfigError, match="sampling.reasoning_effort"):
        load_config(_write(tmp_path, paper))


def test_memory_and_cpus_per_gpu(tmp_path: Path, paper: dict) -> None:
    paper["cluster"]["jobs"]["train"]["mem_per_gpu"] = "lots"
    with pytest.raises(ConfigError, match=r"cluster.jobs.train.mem_per_gpu: memory must be a number"):
        load_config(_write(tmp_path, paper))


def test_gpu_slurm_profile_names_its_envs(tmp_path: Path, paper: dict) -> None:
    del paper["cluster"]["envs"]["vllm"]
    with pytest.raises(ConfigError, match=r"cluster.envs.vllm"):
        load_config(_write(tmp_path, paper))
    paper["cluster"]["device"] = "cpu"  # a CPU profile (the dev cluster) uses this checkout's envs
    assert load_config(_write(tmp_path, paper)).cluster.job_device == "cpu"


def test_token_env_is_a_variable_name(tmp_path: Path, paper: dict) -> None:
    paper["cluster"]["weights"]["token_env"] = "hf_abcdef123"  # a token pasted where its variable's name goes
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        load_config(_write(tmp_path, paper))


# -- any bytes as a config (issue D6) ------------------------------------------------------------

def _alias_bomb(levels: int = 9) -> bytes:
    """Billion laughs: each level lists the previous one nine times (9**9 strings expanded)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return ("\n".join(lines) + "\nname: *l9\n").encode()


HOSTILE: dict[str, tuple[bytes, str]] = {
    # name: (bytes, what the one-line error says)
    "random-bytes": (random.Random(0).randbytes(4096), "NUL byte at offset"),
    "random-bytes-no-nul": (bytes(b or 1 for b in random.Random(1).randbytes(4096)),
                            "not UTF-8 text: byte(s)"),
    "latin-1": (b"name: caf\xe9\nseed: 0\n", "not UTF-8 text: byte(s) e9 at offset 9"),
    "truncated-utf8": (b"name: \xe2\x82", "not UTF-8 text: byte(s) e2 82 at offset 6"),
    "nul": (b"name: a\x00b\n", "NUL byte at offset 7"),
    "utf-16": ("name: x\n".encode("utf-16"), "UTF-16 text"),
    "control-char": (b"name: \x1b[31mred\n", "character U+001B at character offset 6"),
    "nested-brackets": (b"[" * 100_000, "nested too deeply"),
    "nested-closed": (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    "nested-under-yaml-limit": (b"a: " + b"[" * 200 + b"]" * 200, "nested deeper than 64 levels"),
    "alias-bomb": (_alias_bomb(), "more than 100000 values once YAML aliases are expanded"),
    "self-alias": (b"name: &a [*a]\n", "alias that contains itself"),
    "huge": (b"# " + b"x" * (1 << 20) + b"\n", "larger than 1 MiB"),
    "bad-date": (b"name: 2024-13-45\n", "bad value: month must be in 1..12"),
    "huge-int": (b"seed: " + b"9" * 5000 + b"\n", "bad value"),
    "python-tag": (b"!!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    "not-a-mapping": (b"- a\n- b\n", "top level must be a mapping, got list"),
    "empty": (b"", "empty config"),
    "markup": (b"name: [/red] [bold\n", "malformed YAML at line 1"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_any_bytes_give_one_line_config_error(tmp_path: Path, name: str) -> None:
    data, expected = HOSTILE[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and expected in msg and "\n" not in msg, msg
    assert len(msg) < 300, msg


def _plan_cli(*args: str) -> tuple[int, str, BaseException | None]:
    from typer.testing import CliRunner

    from compress_distill.cli import app

    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output, r.exception


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_plan_cli_prints_the_error_without_a_traceback(tmp_path: Path, name: str) -> None:
    data, expected = HOSTILE[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(data)
    code, out, exc = _plan_cli("plan", str(path), "--store", str(tmp_path / "store"))
    assert code == 2 and isinstance(exc, SystemExit), (out, exc)
    assert out.startswith(f"error: {path}: ") and expected in out and "Traceback" not in out
    assert out.count("\n") == 1 and "\x1b" not in out  # one line, no raw control characters


@pytest.mark.parametrize("command", [
    ["plan"], ["explain", "-", "train/x"], ["render", "-", "out"], ["preflight"], ["stage-weights"],
    ["report"], ["run"], ["check-store"]])
def test_every_command_that_takes_a_config_gives_the_error(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    args = [str(path) if a == "-" else str(tmp_path / a) if a == "out" else a for a in command]
    if "-" not in command:
        args.append(str(path))
    code, out, exc = _plan_cli(*args)
    assert code == 2 and isinstance(exc, SystemExit), (out, exc)
    assert f"error: {path}: not UTF-8 text" in out and "Traceback" not in out


def test_mutated_configs_never_escape_as_tracebacks(tmp_path: Path) -> None:
    """Random byte edits of a real config (fixed seed) reach the validator, the plan builder and
    the plan table; each either plans or fails with exit code 2 and an error line."""
    rng = random.Random(0)
    base = (CONFIGS / "mini.yaml").read_bytes()
    for i in range(30):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[pos] = rng.randrange(256)
            else:
                data[pos:pos] = bytes(rng.choice(b"0123456789-:[]{}&*!|>'\"#,. \n") for _ in range(3))
        path = tmp_path / f"m{i}.yaml"
        path.write_bytes(bytes(data))
        code, out, exc = _plan_cli("plan", str(path), "--store", str(tmp_path / "store"))
        assert code in (0, 2) and (exc is None or isinstance(exc, SystemExit)), (i, out, exc)
        assert code == 0 or out.startswith("error: "), (i, out)


def test_plan_stderr_has_no_traceback(tmp_path: Path) -> None:
    """The reported fault, end to end in a real process: a non-UTF-8 config."""
    import subprocess
    import sys

    from .conftest import REPO

    path = tmp_path / "latin1.yaml"
    path.write_bytes((CONFIGS / "mini.yaml").read_text().replace("Mini", "Min\xe9").encode("latin-1"))
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "plan", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"error: {path}: not UTF-8 text: byte(s) e9 at offset ") and \
        res.stderr.count("\n") == 1
