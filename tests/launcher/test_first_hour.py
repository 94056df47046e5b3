"""A newcomer's first hour, through the real `ft` command line: install name,
version and completion, which file a factory is, dry runs away from the cluster, data checked
against its format, did-you-mean, 80-column tables, dry runs kept apart, sweep tasks by
`ID_TASK`, progress in `ft status`, and the states a local job ends in."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import yaml

from ftcore import contract
from launcher import __version__, jobdir, jobs

REPO = Path(__file__).resolve().parents[2]
WORKSHOP = ["submit", "--factory", "llama31_8b", "--dry-run", "trainer.devices=2", "trainer.max_steps=250",
            "trainer.limit_val_batches=10", "optim.lr_scheduler.warmup_steps=50", "data.global_batch_size=8",
            "resume.restore_config.path=/does/not/exist"]


def no_slurm_path(tmp_path: Path) -> str:
    """A PATH without sbatch/squeue/scontrol: the machine of a user away from the cluster."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    return str(empty)


# --- installing -----------------------------------------------------------------------------


def test_the_distribution_name_is_one_fact_and_every_install_line_uses_it():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == contract.DISTRIBUTION == "ft-launch"
    assert project["scripts"] == {"ft": "launcher.cli:main"}  # the command stays `ft`
    # ft is on no index yet: hints name the checkout (or the wheel) this ft runs from
    assert contract.install_line("train") == f"pip install '{REPO}[train]'"
    texts = {p: p.read_text() for p in [REPO / "README.md", REPO / "scripts" / "quickstart.sh",
                                       *REPO.glob("launcher/*.py"), *REPO.glob("fttools/*.py")]}
    for path, text in texts.items():
        assert not re.search(r"pip install (-e )?'?ft(\[|'|\s|$)", text), f"{path} installs the other `ft`"
        assert "'ft[" not in text and "`ft[" not in text, path
    readme = texts[REPO / "README.md"]
    assert "pip install ft-launch" in readme and "pip install './ft_launch-0.1.0-py3-none-any.whl[train]'" in readme


def test_version_and_shell_completion(ft):
    version = ft("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"ft {__version__} (distribution ft-launch)"
    helped = ft("--help", env={"COLUMNS": "100"})
    assert f"ft {__version__}" in helped.stdout and "--install-completion" in helped.stdout
    assert helped.stdout.startswith("Usage: ft ")
    # What the installed completion script asks: the words that complete `ft sub`.
    completed = ft(env={"_FT_COMPLETE": "complete_bash", "COMP_WORDS": "ft sub", "COMP_CWORD": "1"})
    assert completed.stdout.split() == ["submit"]


def test_show_names_the_file_a_factory_came_from_and_stays_yaml(ft, tmp_path):
    shown = ft("show", "--factory", "tiny")
    first = shown.stdout.splitlines()[0]
    assert first == f"# factory tiny: {REPO / 'factories' / 'tiny.yaml'} (built-in)"
    assert yaml.safe_load(shown.stdout)["name"] == "tiny"
    mine = tmp_path / "recipes"
    mine.mkdir()
    (mine / "mine.yaml").write_text("extends: tiny\n")
    by_folder = ft("show", "--factory", "mine", env={"FT_FACTORY_PATH": str(mine)})
    assert by_folder.stdout.splitlines()[0] == f"# factory mine: {mine / 'mine.yaml'} ($FT_FACTORY_PATH)"
    by_path = ft("show", "--factory", str(mine / "mine.yaml"), "--explain")
    assert by_path.stdout.splitlines()[0].endswith("mine.yaml (file)")


# --- doing what it says ---------------------------------------------------------------------


def test_the_workshop_command_dry_runs_on_a_laptop(ft, tmp_path, isolated_home):
    result = ft(*WORKSHOP, env={"PATH": no_slurm_path(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/bash") and "--ntasks-per-node=2" in result.stdout
    assert "warning: model.path /does/not/exist does not exist" in result.stderr
    (folder,) = (isolated_home / "jobs").iterdir()
    assert "path: /does/not/exist" in (folder / "config.yaml").read_text()
    real = ft(*[w for w in WORKSHOP if w != "--dry-run"], "--yes", env={"PATH": no_slurm_path(tmp_path)})
    assert real.returncode == 2 and "error: model.path /does/not/exist does not exist" in real.stderr
    assert len(list((isolated_home / "jobs").iterdir())) == 1  # the refused one wrote nothing


def test_a_data_file_that_does_not_fit_its_format_is_refused_at_submit(ft, tmp_path, isolated_home):
    alpaca = tmp_path / "instructions.jsonl"
    alpaca.write_text("".join(json.dumps({"instruction": f"say {i}", "input": "", "output": str(i)}) + "\n"
                              for i in range(3)))
    result = ft("submit", "--factory", "tiny", "--executor", "local", "--yes", f"data.path={alpaca}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "do not fit data.format=squad" in result.stderr and "data.format=alpaca fits them" in result.stderr
    assert not isolated_home.exists()
    # SQuAD's own {"data": [...]} layout fits squad.
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Ada is 36.", "qas": [
        {"id": "1", "question": "How old is Ada?", "answers": [{"text": "36", "answer_start": 7}]}]}]}]}))
    assert ft("submit", "--factory", "tiny", "--dry-run", f"data.path={squad}").returncode == 0


def test_did_you_mean_knows_other_tools_words_and_dashed_keys(ft):
    result = ft("show", "--factory", "tiny", "optim.learning_rate=1e-3", "--max_steps=100", "data.batch_size=8")
    assert result.returncode == 2
    assert "unknown key 'optim.learning_rate'; did you mean optim.lr" in result.stderr
    assert "written without dashes: trainer.max_steps=100" in result.stderr
    assert "did you mean data.global_batch_size" in result.stderr


def test_answering_no_submits_nothing_and_says_so(isolated_home, tmp_path):
    """A real terminal (a pty): the prompt is asked, "n" is answered."""
    main, child = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "submit", "--factory", "tiny", "--executor", "local"],
                            stdin=child, stdout=child, stderr=child, env=env, cwd=tmp_path)
    os.close(child)
    seen = b""
    deadline = time.time() + 60
    while b"Submit this job?" not in seen and time.time() < deadline:
        if select.select([main], [], [], 1)[0]:
            seen += os.read(main, 4096)
    os.write(main, b"n\n")
    while proc.poll() is None or select.select([main], [], [], 0.2)[0]:
        try:
            if select.select([main], [], [], 1)[0]:
                seen += os.read(main, 4096)
        except OSError:
            break
    os.close(main)
    assert proc.wait(timeout=30) == 1
    assert b"nothing was submitted" in seen, seen.decode(errors="replace")
    assert not (isolated_home / "jobs").exists() or not any((isolated_home / "jobs").iterdir())


# --- tables and folders ---------------------------------------------------------------------


def make_job(root: Path, name: str, record: dict | None, events=(), metrics=(), factory="llama31_405b_lora",
             tasks: int = 0, logs: dict[str, str] | None = None) -> Path:
    folder = root / name
    (folder / "logs").mkdir(parents=True)
    (folder / "config.yaml").write_text(f"name: {factory}\ntrainer:\n  max_steps: 40\n")
    if record is not None:
        jobdir.write_record(folder, factory=factory, **record)
    runs = [folder / "tasks" / str(t) for t in range(tasks)] or [folder]
    for index, run in enumerate(runs):
        run.mkdir(parents=True, exist_ok=True)
        if tasks:
            (run / "config.yaml").write_text(f"name: {factory}\noptim:\n  lr: {10.0 ** -(index + 3)}\n")
        chosen_events = events[index] if tasks else events
        chosen_metrics = metrics[index] if tasks else metrics
        (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in chosen_events))
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in chosen_metrics))
    for log, text in (logs or {}).items():
        (folder / "logs" / log).write_text(text)
    return folder


def test_tables_fit_80_columns_without_cutting_names(ft, isolated_home):
    root = isolated_home / "jobs"
    make_job(root, "20260101-000000-llama31_405b_lora-aaaaaa", {"executor": "local", "job_id": None, "pids": [999999]},
             events=[{"event": "start"}])
    make_job(root, "20260101-000001-llama31_405b_lora-bbbbbb", {"executor": "slurm", "job_id": "123456789"},
             events=[{"event": "start"}, {"event": "exit", "code": 3}])
    env = {"COLUMNS": "80", "PATH": no_slurm_path(isolated_home.parent)}
    listed = ft("jobs", env=env)
    factories = ft("factories", env=env)
    for output in (listed.stdout, factories.stdout):
        assert max(len(line) for line in output.splitlines()) <= 80, output
    assert "20260101-000000-llama31_405b_lora-aaaaaa" in listed.stdout and "123456789" in listed.stdout
    for name in ("llama31_405b_lora", "llama32_1b_squad", "qwen25_1_5b", "tiny"):
        assert re.search(rf"^{name}\s", factories.stdout, re.M), factories.stdout
    as_json = json.loads(ft("factories", "--json").stdout)
    tiny = next(f for f in as_json if f["name"] == "tiny")
    assert tiny["path"] == str(REPO / "factories" / "tiny.yaml") and tiny["method"] == "SFT"


def test_dry_runs_are_listed_apart_and_cleaned(ft, isolated_home, tmp_path):
    assert ft("submit", "--factory", "tiny", "--dry-run").returncode == 0
    root = isolated_home / "jobs"
    (dry,) = root.iterdir()
    done = make_job(root, "20200101-000000-tiny-cccccc", {"executor": "local", "job_id": None},
                    events=[{"event": "start"}, {"event": "exit", "code": 0}], factory="tiny")
    env = {"PATH": no_slurm_path(tmp_path)}
    listed = json.loads(ft("jobs", "--json", env=env).stdout)
    assert [row["folder"] for row in listed] == [str(done)]
    assert "1 dry run(s) not shown" in ft("jobs", env=env).stderr
    assert {row["folder"] for row in json.loads(ft("jobs", "--all", "--json", env=env).stdout)} == {str(dry), str(done)}
    refused = ft("clean", "--dry-runs")  # no terminal to ask on
    assert refused.returncode == 2 and "nothing was removed" in refused.stderr and dry.exists()
    cleaned = ft("clean", "--dry-runs", "--yes")
    assert cleaned.returncode == 0 and "removed 1 dry-run folder(s)" in cleaned.stdout
    assert not dry.exists() and done.exists()


# --- following jobs -------------------------------------------------------------------------


def test_sweep_tasks_are_addressed_by_id_underscore_task(ft, isolated_home, tmp_path):
    root = isolated_home / "jobs"
    start = {"event": "start", "job_id": "987654"}
    folder = make_job(
        root, "20260101-000000-tiny-dddddd", {"executor": "slurm", "job_id": "987654"}, factory="tiny", tasks=2,
        events=[[start, {"event": "exit", "code": 0}], [start]],
        metrics=[[{"step": 40, "end": True, "total_steps": 40, "elapsed_s": 61.0, "checkpoint": "x"}],
                 [{"step": 12, "loss": 1.0, "total_steps": 40, "elapsed_s": 12.0, "remaining_s": 28.0}]],
        logs={"slurm-987654_0.out": "0: step 40/40 task zero\n", "slurm-987654_1.out": "0: step 12/40 task one\n"})
    (folder / "tasks" / "0" / "checkpoints" / "step-000040").mkdir(parents=True)
    env = {"PATH": no_slurm_path(tmp_path)}

    whole = ft("status", "987654", env=env)
    assert whole.returncode == 0, whole.stderr
    assert "state      1 COMPLETED, 1 RUNNING" in whole.stdout
    assert "task 0: COMPLETED | 40 steps done in 1:01" in whole.stdout
    assert "task 1: RUNNING | 12/40 (30%), 0:12 elapsed, 0:28 left" in whole.stdout

    one = ft("status", "987654_1", env=env)
    assert "job        987654_1 (slurm)" in one.stdout and "state      RUNNING" in one.stdout
    assert "progress   12/40 (30%), 0:12 elapsed, 0:28 left" in one.stdout
    by_folder = ft("status", str(folder / "tasks" / "0"), env=env)
    assert "job        987654_0" in by_folder.stdout and "COMPLETED" in by_folder.stdout  # not DRY-RUN

    assert ft("logs", "987654_1", env=env).stdout == "0: step 12/40 task one\n"
    labelled = ft("logs", "987654", env=env).stdout.splitlines()
    assert labelled == ["[task 0] 0: step 40/40 task zero", "[task 1] 0: step 12/40 task one"]
    missing = ft("status", "987654_7", env=env)
    assert missing.returncode == 2 and "has tasks 0-1: there is no task 7" in missing.stderr


def test_a_local_jobs_end_as_its_records_tell_it(isolated_home):
    root = isolated_home / "jobs"
    gone = [2**22 + 12345]  # no such process
    end = {"step": 40, "end": True, "total_steps": 40, "elapsed_s": 30.0, "checkpoint": "x"}
    start = {"event": "start"}
    finished = make_job(root, "a", {"executor": "local", "job_id": None, "pids": gone}, events=[start],
                        metrics=[{"step": 40, "loss": 1.0}, end])
    killed = make_job(root, "b", {"executor": "local", "job_id": None, "pids": gone}, events=[start],
                      metrics=[{"step": 3, "loss": 1.0}])
    cancelled = make_job(root, "c", {"executor": "local", "job_id": None, "pids": gone},
                         events=[start, {"event": "cancel"}, {"event": "exit", "code": 75}])
    again = make_job(root, "d", {"executor": "local", "job_id": None, "pids": gone},
                     events=[start, {"event": "cancel"}, {"event": "exit", "code": 75}, start,
                             {"event": "exit", "code": 0}])
    states = {v.folder: jobs.state(v) for v in jobs.all_jobs(root)}
    assert states == {finished: "COMPLETED", killed: "FAILED (processes gone)", cancelled: "CANCELLED",
                      again: "COMPLETED"}
