"""Fault suite (issue 16, D6): any bytes given as a config get a one-line error and exit 2 from
every command that takes one, never a traceback."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from compress_distill.config import ConfigError, load_config

from ..conftest import CONFIGS


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

    from ..conftest import REPO

    path = tmp_path / "latin1.yaml"
    path.write_bytes((CONFIGS / "mini.yaml").read_text().replace("Mini", "Min\xe9").encode("latin-1"))
    res = subprocess.run([sys.executable, "-m", "compress_distill.cli", "plan", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"error: {path}: not UTF-8 text: byte(s) e9 at offset ") and \
        res.stderr.count("\n") == 1
