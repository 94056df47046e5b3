"""The scheduler registry: every way of running a job is one `Scheduler` subclass, and a new one
needs no edit elsewhere in the launcher. The queue here is a stand-in (a dict in this module):
these are unit tests of the seam; the real SLURM scheduler runs in tests/slurm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftcore.errors import UserError
from launcher import jobs, scheduler, submit
from launcher.local import Local
from launcher.scheduler import Scheduler
from launcher.slurm import Slurm, SrunTrain

QUEUE: dict[str, str] = {}  # job id → state: what the stand-in queue still lists
SUBMITTED: list[str] = []


class Queue(Scheduler):
    """A queue that knows jobs by id, as PBS does; its script is ft's sbatch script, for brevity."""

    name = "queue"
    queue = "queue"
    by_id = True
    arrays = True

    def render(self, job, folder, array_size=0, dependency=None):
        from launcher import render

        return render.render_sbatch(job, folder, array_size=array_size, dependency=dependency)

    def submit(self, folder):
        job_id = str(100 + len(SUBMITTED))
        SUBMITTED.append(job_id)
        QUEUE[job_id] = "PENDING"
        return job_id

    def is_job_id(self, text):
        return isinstance(text, str) and text.isdigit()

    def job_state(self, job_id):
        return QUEUE.get(job_id)

    def queue_states(self, job_id=None):
        return {k: v for k, v in QUEUE.items() if job_id in (None, k)}

    def cancel(self, view):
        QUEUE[view.job_id] = "CANCELLED"

    def time_limit(self, job):
        return "12:00:00 (the queue's own limit)"


@pytest.fixture
def queue_registered(monkeypatch):
    monkeypatch.setattr(scheduler, "_REGISTRY", dict(scheduler._REGISTRY))
    monkeypatch.setattr(scheduler, "NAMES", scheduler.NAMES)
    scheduler.register("queue", f"{__name__}:Queue")
    QUEUE.clear()
    SUBMITTED.clear()
    yield
    QUEUE.clear()


def test_names_map_to_their_classes_and_records_to_what_ran_them():
    assert scheduler.NAMES == ("slurm", "local")
    assert isinstance(scheduler.get("slurm"), Slurm) and isinstance(scheduler.get("local"), Local)
    assert isinstance(scheduler.for_record("srun"), SrunTrain) and scheduler.for_record("torchrun").name == "torchrun"
    assert scheduler.for_record("dry-run") is None and scheduler.for_record("pbs-from-the-future") is None
    with pytest.raises(UserError, match="unknown executor 'pbs': choose slurm or local"):
        scheduler.get("pbs")


def test_a_bad_plugin_name_is_refused():
    with pytest.raises(ValueError):
        scheduler.register("--oops", "x:Y")


def test_a_new_scheduler_is_one_class_and_one_registry_line(queue_registered):
    """submit, state, the jobs table, cancel and resubmit all go through the new class."""
    p = submit.prepare("tiny", ["trainer.max_steps=3"], executor="queue")
    assert dict(submit.summary(p))["time limit"] == "12:00:00 (the queue's own limit)"
    folder = submit.write(p)
    job_id = submit.submit(folder, "tiny", executor="queue")
    view = jobs.load(folder)
    assert (job_id, view.executor, view.job_id) == ("100", "queue", "100")
    assert jobs.state(view) == "PENDING"
    QUEUE[job_id] = "RUNNING"
    (row,) = jobs.summary_rows([view])
    assert (row["id"], row["executor"], row["state"]) == ("100", "queue", "RUNNING")
    jobs.cancel(view)
    assert jobs.state(view) == "CANCELLED"
    # The queue forgets the job; its folder says how it ended, and it can be submitted again.
    del QUEUE[job_id]
    (folder / "events.jsonl").write_text(json.dumps({"event": "exit", "code": 1}) + "\n")
    assert jobs.state(jobs.load(folder)) == "FAILED (exit 1)"
    again = submit.resubmit(jobs.load(folder), [])
    assert again == "101" and jobs.load(folder).earlier_ids == ["100"]


def test_a_scheduler_without_arrays_refuses_a_sweep_naming_those_that_have_them():
    with pytest.raises(UserError, match="--executor local cannot run: use it with --executor slurm"):
        submit.prepare("tiny", [], executor="local", sweeps=["optim.lr=1e-3,1e-4"])


def test_each_scheduler_states_its_own_time_limit():
    job = submit.prepare("tiny", ["slurm.time=01:30:00"], dry_run=True).job
    assert scheduler.get("slurm").time_limit(job) == "01:30:00"
    assert scheduler.get("local").time_limit(job) == "none (local)"
    assert Scheduler().time_limit(job) == "the scheduler's default"  # a plugin that says nothing


@pytest.mark.parametrize("env, started_by", [
    ({"SLURM_JOB_ID": "15", "TORCHELASTIC_RUN_ID": "r"}, "srun"),  # torchrun inside a SLURM job: SLURM's id names it
    ({"TORCHELASTIC_RUN_ID": "r", "RANK": "0", "WORLD_SIZE": "1"}, "torchrun"),
    ({"RANK": "0", "WORLD_SIZE": "1"}, "local"),  # rank variables alone: nothing that names a run
    ({}, "local"),
])
def test_the_seam_says_which_launcher_started_an_ft_train_task(env, started_by):
    launcher = scheduler.task_launcher(env)
    assert launcher.name == started_by
    assert scheduler.for_record(launcher.name).name == started_by  # its record reads back as what ran it


RAN: list[tuple[str, bool]] = []


class Here(Scheduler):
    """A way of running jobs in ft's own process, as `local` does: the CLI hands it the folder."""

    name = "here"
    runs_here = True

    def render(self, job, folder, array_size=0, dependency=None):
        from launcher import render

        return render.render_sbatch(job, folder, array_size=array_size, dependency=dependency)

    def run(self, job, folder, detach=False, history=None):
        RAN.append((str(folder), detach))
        return 7


def test_the_cli_runs_a_job_that_runs_here_through_its_scheduler(monkeypatch, isolated_home):
    """`ft submit` and `ft resubmit` end in the scheduler's `run` (its status is ft's), for any
    scheduler that runs here: the CLI never names `local`."""
    from typer.testing import CliRunner

    from launcher.cli import app

    monkeypatch.setattr(scheduler, "_REGISTRY", dict(scheduler._REGISTRY))
    monkeypatch.setattr(scheduler, "NAMES", scheduler.NAMES)
    scheduler.register("here", f"{__name__}:Here")
    RAN.clear()
    done = CliRunner().invoke(app, ["submit", "--factory", "tiny", "--executor", "here", "--yes", "--detach",
                                    "trainer.max_steps=1"])
    assert done.exit_code == 7, done.output
    ((folder, detach),) = RAN
    assert detach and jobs.load(Path(folder)).executor == "here"
    (Path(folder) / "events.jsonl").write_text(json.dumps({"event": "exit", "code": 1}) + "\n")
    again = CliRunner().invoke(app, ["resubmit", folder, "--yes"])
    assert again.exit_code == 7, again.output
    assert RAN[1] == (folder, False)
