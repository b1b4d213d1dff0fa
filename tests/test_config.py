"""Config loading: every shipped YAML loads; bad input gets a clear error naming file and field."""

from __future__ import annotations

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


def test_slurm_time_limit_inside_the_requeue_window_is_refused(tmp_path: Path, paper: dict) -> None:
    """USR1 comes REQUEUE_SIGNAL_S before the limit and the job requeues to resume: a limit inside
    that window would signal the job as it starts, and it would requeue forever."""
    paper["cluster"]["jobs"]["eval"]["time_limit"] = "10"  # minutes: exactly the window
    with pytest.raises(ConfigError, match=r"eval \(10\) is within the 600 s"):
        load_config(_write(tmp_path, paper))
    paper["cluster"]["requeue"] = False  # no requeue, no signal: any limit
    assert load_config(_write(tmp_path, paper)).cluster.job("eval").time_limit == "10"
    paper["cluster"]["requeue"] = True
    paper["cluster"]["jobs"]["eval"]["time_limit"] = "00:10:01"
    assert load_config(_write(tmp_path, paper)).cluster.job("eval").time_limit == "00:10:01"


@pytest.mark.parametrize("seeds,expect", [
    ([-1], r"grid\.0\.seeds\.0: Input should be greater than or equal to 0"),
    ([2**32], r"grid\.0\.seeds\.0: Input should be less than or equal to 4294967295"),
    ([0, 1, 1], r"grid\.0\.seeds: seed\(s\) \[1\] listed twice"),
    (["1"], r"grid\.0\.seeds\.0: Input should be a valid integer"),
    ([1.5], r"grid\.0\.seeds\.0: Input should be a valid integer"),
    ([True], r"grid\.0\.seeds\.0: Input should be a valid integer"),
    ([], r"grid\.0\.seeds: an empty list trains nothing"),
    (3, r"grid\.0\.seeds: Input should be a valid list"),
])
def test_bad_seeds_name_the_block_and_the_value(tmp_path: Path, paper: dict, seeds: object, expect: str) -> None:
    paper["grid"][0]["seeds"] = seeds
    with pytest.raises(ConfigError, match=expect):
        load_config(_write(tmp_path, paper))


def test_seeds_default_to_one(tmp_path: Path, paper: dict) -> None:
    assert load_config(_write(tmp_path, paper)).grid[0].seeds is None  # one seed: training.seed
    paper["grid"][0]["seeds"] = [0, 1, 2]
    assert load_config(_write(tmp_path, paper)).grid[0].seeds == [0, 1, 2]
