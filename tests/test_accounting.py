"""GPU-hours, energy and CO2 from sacct: pure aggregation, plus one run on the dev cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress_distill.backends.base import JobRequest, JobState
from compress_distill.backends.slurm import SlurmBackend
from compress_distill.backends.slurm_cli import CommandResult
from compress_distill.backends.watch import JobWatcher
from compress_distill.cluster import accounting as acc

from .conftest import need_dev_cluster

SACCT = """\
20|20|REQUEUED|1|billing=1,cpu=1,gres/gpu:h100=2,gres/gpu=2,mem=1G,node=1|2026-11-23T16:15:26|train.a
20|20|COMPLETED|3600|billing=1,cpu=1,gres/gpu:h100=2,gres/gpu=2,mem=1G,node=1|2026-11-23T16:15:28|train.a
21|21|COMPLETED|1800|billing=8,cpu=8,gres/gpu=8,mem=8G,node=1|2026-11-23T16:15:28|eval.a
22|22|FAILED|7200|billing=2,cpu=2,mem=2G,node=1|2026-11-23T16:15:28|cpu.x
23|23|PENDING|0||2026-11-23T16:15:28|train.b
"""


@pytest.mark.parametrize("tres, gpus", [
    ("billing=1,cpu=1,gres/gpu:h100=2,gres/gpu=2,mem=1G,node=1", 2),
    ("cpu=4,gres/gpu:h100=4,mem=1G", 4),   # only typed counts recorded
    ("cpu=4,gres/gpu:a100=1,gres/gpu:h100=2", 3),
    ("cpu=2,mem=1G", 0),
    ("", 0),
])
def test_gpus_from_tres(tres: str, gpus: int) -> None:
    assert acc.gpus_from_tres(tres) == gpus


def test_parse_usage_counts_every_attempt() -> None:
    rows = acc.parse_usage(SACCT)
    assert [(u.job_id, u.gpus, u.gpu_hours) for u in rows] == [
        ("20", 2, 2 / 3600), ("20", 2, 2.0), ("21", 8, 4.0), ("22", 0, 0.0), ("23", 0, 0.0)]


def test_footprint_paper_constants() -> None:
    energy, co2 = acc.footprint(100.0)
    assert energy == pytest.approx(100 * 0.7 * 1.15)       # 80.5 kWh
    assert co2 == pytest.approx(80.5 * 79 / 1000)          # 6.36 kg
    energy, co2 = acc.footprint(100.0, gco2_per_kwh=400)
    assert co2 == pytest.approx(80.5 * 0.4)


def test_summarize_by_stage() -> None:
    rows = acc.parse_usage(SACCT)
    by_stage = acc.summarize(rows, key=lambda u: u.name.split(".")[0])
    assert set(by_stage) == {"cpu", "eval", "train"}
    train = by_stage["train"]
    assert train.jobs == 2 and train.gpu_hours == pytest.approx(2 + 2 / 3600)
    assert train.energy_kwh == pytest.approx(train.gpu_hours * 0.805)
    total = acc.summarize(rows)["total"]
    assert total.gpu_hours == pytest.approx(6 + 2 / 3600) and total.jobs == 4


def test_fetch_usage_is_one_sacct_call_with_starttime() -> None:
    calls = []

    def runner(argv, timeout):
        calls.append(list(argv))
        return CommandResult(tuple(argv), 0, SACCT, "")

    rows = acc.fetch_usage(["20", "21", "22", "20"], runner=runner)
    assert len(calls) == 1 and len(rows) == 5
    argv = calls[0]
    assert "--jobs=20,21,22" in argv and any(a.startswith("--starttime=") for a in argv)
    assert "--allocations" in argv and "--duplicates" in argv and "--parsable2" in argv
    assert acc.fetch_usage([], runner=runner) == [] and len(calls) == 1


@pytest.mark.slurm
def test_gpu_hours_measured_on_dev_cluster(tmp_path: Path) -> None:
    need_dev_cluster()
    b = SlurmBackend(gpu_request="gres")
    r = JobRequest(name=f"acct-{tmp_path.name}", command=["sleep", "2"], workdir=tmp_path,
                   log_path=tmp_path / "a.log", kind="train", gpus=3, mem="64M")
    w = JobWatcher(b, initial_interval=0.3, max_interval=1.0)
    jid = w.submit(r)
    assert w.wait([jid], timeout=60)[jid].state is JobState.COMPLETED
    [u] = acc.fetch_usage([jid])
    assert u.gpus == 3 and u.elapsed_s >= 2 and u.gpu_hours == pytest.approx(u.elapsed_s * 3 / 3600)
    assert acc.summarize([u])["total"].energy_kwh == pytest.approx(u.gpu_hours * 0.805)
