"""What another user (or a broken disk) can plant in FT_HOME's job folders and their index: a
FIFO, a link to /dev/zero, a name too long for the filesystem. `ft status` and `ft jobs` read
only plain files, bounded by what they hold, skip and name a bad entry and answer for the rest;
nothing waits for ever or grows without bound (each run here is capped at 4 GiB of address space
and 60 s, so a regression fails instead of taking the machine)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import jobindex, paths

REPO = Path(__file__).resolve().parents[2]


def ft_bounded(*args: str) -> subprocess.CompletedProcess:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), preexec_fn=cap)


def job_folder(name: str, job_id: str) -> Path:
    """A job folder as `ft submit` leaves it (config and record), for job `job_id`."""
    folder = paths.jobs_root() / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text((REPO / "factories" / "tiny.yaml").read_text())
    (folder / "submission.json").write_text(json.dumps({"executor": "slurm", "job_id": job_id, "factory": "tiny"}))
    return folder


def plant(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "too long":
        path.write_text("x" * 300)
    elif kind == "folder":
        path.mkdir()


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "too long", "folder"])
def test_a_bad_index_entry_is_skipped_and_the_job_found_by_its_folder(isolated_home, kind):
    folder = job_folder("20260101-000000-tiny-aaaaaa", "424242")
    plant(jobindex.folder(paths.jobs_root()) / jobindex.IDS / "424242", kind)
    result = ft_bounded("status", "424242")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert str(folder) in result.stdout
    if kind != "folder":  # (a folder there stays: the index never removes what it did not write)
        assert jobindex.lookup(paths.jobs_root(), "424242") == folder  # the scan wrote a good entry again


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "folder"])
@pytest.mark.parametrize("name", ["config.yaml", "submission.json"])
def test_ft_jobs_names_a_folder_with_a_bad_file_and_lists_the_rest(isolated_home, kind, name):
    good = job_folder("20260101-000000-tiny-aaaaaa", "515151")
    bad = job_folder("20260101-000001-tiny-bbbbbb", "525252")
    plant(bad / name, kind)
    result = ft_bounded("jobs", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    rows = {row["folder"]: row for row in json.loads(result.stdout)}
    assert rows[str(good)]["id"] == "515151"
    assert rows[str(bad)]["state"].startswith("UNREADABLE") and name in rows[str(bad)]["state"], rows[str(bad)]


def test_a_metrics_file_that_is_a_fifo_or_endless_never_hangs_status(isolated_home):
    folder = job_folder("20260101-000000-tiny-aaaaaa", "616161")
    plant(folder / "events.jsonl", "fifo")
    plant(folder / "metrics.jsonl", "/dev/zero")
    result = ft_bounded("status", "616161")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert str(folder) in result.stdout
