"""Corrupt or unexpected content in any job-folder file: no traceback from any command, one
bad folder never hides the others from `ft jobs`, a damaged newest checkpoint falls back to
the previous complete one.

Each corruption is applied to one folder beside a healthy one; the commands run in-process
through `launcher.cli.main` (the real entry point), so any exception other than the exit
it chooses fails the test with its traceback."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Callable

import pytest

from ftcore import layout
from launcher import cli, jobdir, jobs, locate, submit


def fake_safetensors(path: Path, tensor_bytes: int = 64) -> None:
    """A well-formed safetensors file (header + bytes) without torch."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [tensor_bytes // 4], "data_offsets": [0, tensor_bytes]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * tensor_bytes)


def fake_checkpoint(run: Path, step: int) -> Path:
    """The files of a LoRA checkpoint as the trainer lays them out (contents are stand-ins:
    only their shape is read by the launcher)."""
    folder = layout.step_dir(run / layout.CHECKPOINTS, step)
    state = folder / layout.TRAINING_STATE
    (state / layout.DCP).mkdir(parents=True)
    (state / layout.DCP / layout.DCP_INDEX).write_bytes(b"dcp")
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    fake_safetensors(folder / "adapter_model.safetensors")
    (state / layout.TRAINER_STATE).write_text(json.dumps({"step": step, "seed": 1}))
    (state / layout.COMPLETE_MARKER).write_text(f"step {step}\n")
    (run / layout.CHECKPOINTS / layout.LATEST).write_text(folder.name + "\n")
    return folder


def healthy_job(job_id: str) -> Path:
    """A submitted tiny job that ran 4 steps and saved checkpoints at 2 and 4."""
    folder = submit.write(submit.prepare("tiny", [], executor="slurm", dry_run=True))
    jobdir.write_record(folder, executor="slurm", job_id=job_id, factory="tiny", folder=str(folder), history=[])
    (folder / layout.EVENTS).write_text(json.dumps({"event": "start", "job_id": job_id}) + "\n"
                                        + json.dumps({"event": "exit", "code": 0}) + "\n")
    (folder / layout.METRICS).write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4)))
    (folder / layout.LOGS / f"slurm-{job_id}.out").write_text("0: step 1 | loss 1.0\n")
    for step in (2, 4):
        fake_checkpoint(folder, step)
    return folder


def newest(folder: Path) -> Path:
    return layout.step_dir(folder / layout.CHECKPOINTS, 4)


BINARY = bytes(range(256)) * 4
# name → what to do to the bad folder
CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "events binary": lambda f: (f / layout.EVENTS).write_bytes(BINARY),
    "events not objects": lambda f: (f / layout.EVENTS).write_text(
        '5\n[1, 2]\n"start"\n{"event": 5}\n{"event": "exit", "code": "x"}\nnull\n'),
    "events a folder": lambda f: ((f / layout.EVENTS).unlink(), (f / layout.EVENTS).mkdir()),
    "record not JSON": lambda f: (f / layout.RECORD).write_text("{"),
    "record a list": lambda f: (f / layout.RECORD).write_text("[]"),
    "record binary": lambda f: (f / layout.RECORD).write_bytes(BINARY),
    "record hostile job id": lambda f: (f / layout.RECORD).write_text(json.dumps(
        {"executor": "slurm", "job_id": "1; touch pwned\n#SBATCH --x"})),
    "record job id a number": lambda f: (f / layout.RECORD).write_text(json.dumps({"executor": "slurm", "job_id": 7})),
    "record odd fields": lambda f: (f / layout.RECORD).write_text(json.dumps(
        {"executor": ["slurm"], "job_id": None, "history": "x", "pids": ["a", None]})),
    "record local with junk pids": lambda f: (f / layout.RECORD).write_text(json.dumps(
        {"executor": "local", "pids": ["a", None, 3.5]})),
    "metrics binary": lambda f: (f / layout.METRICS).write_bytes(BINARY),
    "metrics not objects": lambda f: (f / layout.METRICS).write_text('[1]\n5\n{"step": "12"}\n{"step": true}\n'),
    "config binary": lambda f: (f / layout.CONFIG).write_bytes(BINARY),
    "config a list": lambda f: (f / layout.CONFIG).write_text("- 1\n- 2\n"),
    "config not YAML": lambda f: (f / layout.CONFIG).write_text("a: [\n"),
    "config nested deep": lambda f: (f / layout.CONFIG).write_text("[" * 5000 + "]" * 5000),
    "config alias bomb": lambda f: (f / layout.CONFIG).write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))),
    "config odd values": lambda f: (f / layout.CONFIG).write_text("name: [1]\ntrainer: 5\n"),
    "config missing": lambda f: (f / layout.CONFIG).unlink(),
    "latest garbage": lambda f: (f / layout.CHECKPOINTS / layout.LATEST).write_bytes(BINARY),
    "latest a folder": lambda f: ((f / layout.CHECKPOINTS / layout.LATEST).unlink(),
                                  (f / layout.CHECKPOINTS / layout.LATEST).mkdir()),
    "newest weights truncated": lambda f: (newest(f) / "adapter_model.safetensors").write_bytes(
        (newest(f) / "adapter_model.safetensors").read_bytes()[:-10]),
    "newest weights header garbage": lambda f: (newest(f) / "adapter_model.safetensors").write_bytes(BINARY),
    "newest trainer state garbage": lambda f: (newest(f) / layout.TRAINING_STATE / layout.TRAINER_STATE).write_text("{"),
    "newest trainer state of another step": lambda f: (newest(f) / layout.TRAINING_STATE / layout.TRAINER_STATE)
        .write_text(json.dumps({"step": 3})),
    "newest resume index missing": lambda f: (newest(f) / layout.TRAINING_STATE / layout.DCP / layout.DCP_INDEX).unlink(),
    "adapter config a list": lambda f: [(c / "adapter_config.json").write_text("[]")
                                        for c in (f / layout.CHECKPOINTS).glob("step-*")],
    "adapter config odd base": lambda f: [(c / "adapter_config.json").write_text('{"base_model_name_or_path": 5}')
                                          for c in (f / layout.CHECKPOINTS).glob("step-*")],
    "tasks junk": lambda f: ((f / layout.TASKS).mkdir(), (f / layout.TASKS / "x").write_text("1"),
                             (f / layout.TASKS / "notanumber").mkdir()),
    "log binary": lambda f: (f / layout.LOGS / "slurm-1.out").write_bytes(BINARY),
}
CHECKPOINT_DAMAGE = {k for k in CORRUPTIONS if k.startswith("newest")}


def run_ft(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`ft ARGS` through the real entry point, in this process."""
    monkeypatch.setattr(sys, "argv", ["ft", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


@pytest.fixture
def no_scheduler(monkeypatch, tmp_path):
    """No SLURM commands here: ft must fall back to the folders' own records."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corrupt_folder_never_breaks_any_command(name, monkeypatch, capsys, no_scheduler, tmp_path):
    good, bad = healthy_job("1001"), healthy_job("1002")
    CORRUPTIONS[name](bad)
    monkeypatch.chdir(tmp_path)

    code, out, err = run_ft(monkeypatch, capsys, "jobs", "--json")
    assert code == 0, err
    rows = {row["folder"]: row for row in json.loads(out)}
    assert set(rows) == {str(good), str(bad)}
    assert rows[str(good)]["state"] == "COMPLETED" and rows[str(good)]["progress"].startswith("4/")
    assert run_ft(monkeypatch, capsys, "jobs")[0] == 0

    commands = [["status", str(bad)], ["logs", str(bad)], ["cancel", str(bad)], ["resubmit", str(bad)],
                ["push", str(bad), "me/x", "--dry-run"], ["submit", "--factory", "tiny", "--dry-run", "--after", str(bad)]]
    if name.startswith("metrics"):  # drawing costs a second; only metrics change what it reads
        commands.append(["plot", str(bad), "--out", str(tmp_path / "p.png")])
    for command in commands:
        code, out, err = run_ft(monkeypatch, capsys, *command)
        assert code in (0, 1, 2), (command, code, err)
        assert "Traceback" not in err
        assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name", sorted(CHECKPOINT_DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(name):
    folder = healthy_job("1003")
    assert layout.newest_complete(folder) == newest(folder)
    CORRUPTIONS[name](folder)
    assert layout.damage(newest(folder), 4) is not None
    fallback = layout.step_dir(folder / layout.CHECKPOINTS, 2)
    assert layout.newest_complete(folder) == fallback
    assert locate.find_checkpoint(str(folder)).path == fallback.resolve()
    assert jobs.load(folder).latest_checkpoint() == fallback.name


def test_an_unreadable_folder_is_named_in_ft_jobs(monkeypatch, capsys, no_scheduler):
    healthy_job("1004")
    bad = healthy_job("1005")
    (bad / layout.RECORD).write_text("{")
    code, out, _ = run_ft(monkeypatch, capsys, "jobs", "--json")
    (row,) = [r for r in json.loads(out) if r["folder"] == str(bad)]
    assert row["state"].startswith("UNREADABLE") and "submission.json" in row["state"]


def test_stray_entries_in_the_jobs_root_are_skipped(monkeypatch, capsys, no_scheduler, isolated_home):
    good = healthy_job("1006")
    root = good.parent
    (root / "a-file").write_bytes(BINARY)
    (root / "loop").symlink_to(root / "loop")
    (root / "empty").mkdir()
    code, out, err = run_ft(monkeypatch, capsys, "jobs", "--json")
    assert code == 0, err
    states = {Path(r["folder"]).name: r["state"] for r in json.loads(out)}
    assert states[good.name] == "COMPLETED" and states["empty"].startswith("UNREADABLE")
