"""Checkpoints for the after-training tests, made by the real trainer, and `ft` run in-process.

A module trains what it needs once (module-scoped fixtures): a tiny random Llama for two
steps on CPU, in a folder laid out as `ft submit` lays out a job (config.yaml, then the
trainer's checkpoints/ and metrics.jsonl), so every CKPT form resolves as it does for users.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from unittest import mock

from trainer_helpers import DIST_VARS, TINY_QA, tiny_job, validate

from launcher import jobdir
from ftcore.schema import job_to_dict

# Two optimizer steps of 4 sequences; a large learning rate so the adapters move visibly.
QUICK = dict(
    trainer={"max_steps": 2},
    data={"global_batch_size": 4, "micro_batch_size": 4},
    optim={"lr": 1e-2, "lr_scheduler": {"name": "constant", "warmup_steps": 0}},
)
PROMPT = "Context: Ada lives in Oslo. Ada is 36.\nQuestion: How old is Ada?\nAnswer:"


@contextlib.contextmanager
def one_process():
    """Hide variables that would make the trainer think it is one rank of many."""
    saved = {name: os.environ.pop(name) for name in DIST_VARS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest on one thread: on a busy two-core machine a second one only spins."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_job(home: Path, name: str, *presets: dict, **sections) -> Path:
    """Train a tiny job into `home/jobs/name` (a job folder, as `ft submit` makes them)."""
    from trainer.train import run

    job = validate(tiny_job(QUICK, *presets, **sections))
    folder = home / "jobs" / name
    folder.mkdir(parents=True)
    (folder / jobdir.CONFIG).write_text(jobdir.config_text(job_to_dict(job)))
    with one_process():
        assert run(job, folder) == 0
    return folder


def write_records(path: Path, count: int, start: int = 0) -> Path:
    """The first `count` records of ft's tiny SQuAD-style set, as a .jsonl file."""
    lines = TINY_QA.read_text().splitlines()[start:start + count]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def run_ft(*args: str) -> tuple[int, str, str]:
    """The real `ft` entry point in this process (torch is imported once per test run):
    exit status, stdout and stderr."""
    from launcher import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), mock.patch.object(sys, "argv", ["ft", *args]):
        try:
            cli.main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return code, out.getvalue(), err.getvalue()
