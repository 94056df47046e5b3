"""The scheduler seam when sbatch says no, says something unreadable, or hangs; two submits
into one folder at once. A stand-in `sbatch` on PATH plays the scheduler (these are unit
tests of the seam: the real cluster's answers are exercised in tests/slurm)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from fake_scheduler import fake_scheduler

from ftcore.errors import UserError
from launcher import jobdir, jobs, slurm, submit


def tiny_folder() -> Path:
    return submit.write(submit.prepare("tiny", [], executor="slurm", dry_run=True))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder by relative path (the lock file aside: it holds nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != jobdir.LOCK}


def test_a_refused_submit_removes_its_new_folder(tmp_path, monkeypatch, isolated_home):
    fake_scheduler(tmp_path, monkeypatch, "echo 'sbatch: error: invalid partition' >&2\nexit 1\n")
    folder = tiny_folder()
    with pytest.raises(slurm.SchedulerError) as err:
        submit.submit(folder, "tiny")
    assert "invalid partition" in "\n".join(err.value.problems)
    assert not folder.exists()


@pytest.mark.parametrize("answer", ["", "Submitted to the queue, thank you\n", "12x34\n", "\x00\xff garbage\n"])
def test_an_unreadable_yes_keeps_the_folder_and_says_how_to_find_the_job(answer, tmp_path, monkeypatch):
    fake_scheduler(tmp_path, monkeypatch, f"printf '%s' {json.dumps(answer)}\nexit 0\n")
    folder = tiny_folder()
    with pytest.raises(slurm.SubmissionUnclear) as err:
        submit.submit(folder, "tiny", job_name="ft-tiny")
    assert folder.is_dir(), "a job may run in this folder: it must stay"
    assert "squeue --me --name=ft-tiny" in err.value.hint and str(folder) in err.value.hint
    record = jobdir.read_record(folder)
    assert record["submission"] == "unclear" and record["job_id"] is None
    view = jobs.load(folder)
    assert jobs.state(view).startswith("UNKNOWN")
    # Once the job starts, its own start event names it.
    (folder / "events.jsonl").write_text(json.dumps({"event": "start", "job_id": "777"}) + "\n")
    assert jobs.load(folder).job_id == "777"


def test_a_hung_sbatch_is_stopped_and_the_folder_kept(tmp_path, monkeypatch):
    fake_scheduler(tmp_path, monkeypatch, "echo 'contacting controller' \nsleep 30 &\nwait\n")
    monkeypatch.setattr(slurm, "SBATCH_TIMEOUT_S", 0.5)
    folder = tiny_folder()
    started = time.monotonic()
    with pytest.raises(slurm.SubmissionUnclear, match="did not answer"):
        submit.submit(folder, "tiny")
    assert time.monotonic() - started < 10, "the wrapper's child must not hold ft"
    assert folder.is_dir() and "contacting controller" in jobdir.read_record(folder)["sbatch_answer"]


def test_a_refused_resubmit_leaves_the_folder_exactly_as_it_was(tmp_path, monkeypatch):
    fake_scheduler(tmp_path, monkeypatch, "echo 4242\n")
    folder = tiny_folder()
    submit.submit(folder, "tiny")
    (folder / "events.jsonl").write_text(json.dumps({"event": "exit", "code": 1}) + "\n")
    before = snapshot(folder)
    fake_scheduler(tmp_path, monkeypatch, "echo 'sbatch: error: QOSMaxSubmitJobPerUserLimit' >&2\nexit 1\n")
    with pytest.raises(slurm.SchedulerError, match="as it was"):
        submit.resubmit(jobs.load(folder), ["trainer.max_steps=7", "slurm.time=00:05:00"])
    assert snapshot(folder) == before


def test_a_secret_in_the_scheduler_answer_is_not_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    fake_scheduler(tmp_path, monkeypatch, "echo \"odd answer $HF_TOKEN\"\n")
    folder = tiny_folder()
    with pytest.raises(slurm.SubmissionUnclear):
        submit.submit(folder, "tiny")
    assert "hf_abcdefghijklmnop" not in (folder / jobdir.RECORD).read_text()


def test_two_resubmits_at_once_are_serialised_and_no_record_is_lost(tmp_path, monkeypatch):
    # sbatch takes a while and hands out increasing ids; the second resubmit must wait for
    # the first, then see the job it submitted as pending and refuse.
    counter = tmp_path / "ids"
    counter.write_text("100")
    fake_scheduler(tmp_path, monkeypatch,
                   f"sleep 0.3\nn=$(($(cat {counter}) + 1)); echo $n > {counter}; echo $n\n")
    folder = tiny_folder()
    (folder / "events.jsonl").write_text(json.dumps({"event": "exit", "code": 0}) + "\n")
    # Ask scontrol: the newly submitted job is pending.
    (tmp_path / "fake-bin" / "scontrol").write_text(
        "#!/bin/bash\necho \"JobId=$4 JobName=ft-tiny JobState=PENDING Reason=None\"\n")
    outcomes: list[object] = []

    def resubmit():
        try:
            outcomes.append(submit.resubmit(jobs.load(folder), []))
        except UserError as err:
            outcomes.append(err)

    threads = [threading.Thread(target=resubmit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, UserError)]
    assert ids == ["101"] and len(refused) == 1 and "still PENDING" in refused[0].problems[0]
    assert jobdir.read_record(folder)["job_id"] == "101"


def test_a_held_lock_makes_the_second_command_wait_then_give_up(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    with jobdir.locked(folder):
        with pytest.raises(UserError, match="another ft command is changing"):
            with jobdir.locked(folder, wait=0.2):
                pass
    with jobdir.locked(folder, wait=0.2):  # free again
        pass


def test_a_job_the_scheduler_forgot_is_unknown_cancellable_and_logs_f_ends(tmp_path, monkeypatch):
    fake_scheduler(tmp_path, monkeypatch, "echo 55\n")  # scontrol: "Invalid job id" for every job
    folder = tiny_folder()
    submit.submit(folder, "tiny")
    (folder / "events.jsonl").write_text(json.dumps({"event": "start", "job_id": "55"}) + "\n")
    (folder / "logs" / "slurm-55.out").write_text("0: step 1 | loss 2.0\n")
    view = jobs.load(folder)
    assert jobs.state(view).startswith("UNKNOWN") and jobs.is_finished(jobs.state(view))
    assert list(jobs.log_lines(view, follow=True, poll=0.01)) == ["0: step 1 | loss 2.0"]  # returns
    (tmp_path / "fake-bin" / "scancel").write_text("#!/bin/bash\necho 'Invalid job id specified' >&2\nexit 1\n")
    (tmp_path / "fake-bin" / "scancel").chmod(0o755)
    jobs.cancel(view)
    assert jobs.state(jobs.load(folder)) == "CANCELLED"


@pytest.mark.parametrize("answer, expected", [
    ("echo 'KillWait                = 45 sec'\necho 'KillOnBadExit           = 0'\n", 45),  # scontrol's own words
    ("echo 'slurm_load_ctl_conf error: Unable to contact slurm controller' >&2\nexit 1\n", None),
    ("echo 'KillWait = soon'\n", None),
    ("printf 'KillWait = %05000d sec\\n' 7\n", None),  # 5,000 digits: more than int() reads
    ("echo 'KillWait = \u0664\u0665 sec'\n", None),  # Arabic-Indic digits
    ("sleep 30 &\nwait\n", None),
])
def test_the_clusters_kill_wait_is_read_or_left_unsaid(answer, expected, tmp_path, monkeypatch):
    """The KillWait the script hands the trainer: read from `scontrol show config`; a controller
    that is down, odd words or a hang leave it unsaid (and never fail a submission)."""
    bin_dir = fake_scheduler(tmp_path, monkeypatch, "exit 1\n")
    (bin_dir / "scontrol").write_text("#!/bin/bash\n" + answer)
    monkeypatch.setattr(slurm, "TIMEOUT_S", 0.5)
    assert slurm.kill_wait_s() == expected
    script = slurm.Slurm().render(submit.prepare("tiny", [], executor="slurm", dry_run=True).job, tmp_path / "job")
    assert ("export FT_KILL_WAIT_S=45\n" in script) == (expected == 45)
