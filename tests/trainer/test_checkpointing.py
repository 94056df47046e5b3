"""A trainer killed with SIGKILL in the middle of writing a checkpoint: the half-written
folder is ignored, the next run resumes from the previous complete checkpoint, and the
result equals an uninterrupted run bit for bit."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from trainer_helpers import launch, start, tiny_job, train_losses, write_config

pytestmark = pytest.mark.train

STEPS = 12


def sft_job() -> dict:
    # SFT saves weights and optimizer state every step: a wide window to kill it in.
    return tiny_job(peft=None, trainer={"max_steps": STEPS, "accelerator": "cpu"},
                    checkpoint={"every_steps": 1, "keep_last": 3})


def final_weights(job_dir):
    latest = (job_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(job_dir / "checkpoints" / latest / "model.safetensors")


def test_sigkill_during_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    reference = tmp_path / "reference"
    results = launch(write_config(reference, sft_job()), 1)
    assert results[0].returncode == 0, results[0].stdout + results[0].stderr

    crashed = tmp_path / "crashed"
    config = write_config(crashed, sft_job())
    ckpts = crashed / "checkpoints"
    caught = None
    for _ in range(8):  # each try resumes where the last left off, so it cannot change the result
        (proc,) = start(config, 1)
        deadline = time.time() + 120
        # Poll hard for a checkpoint being written after a complete one exists; kill right there.
        while time.time() < deadline and proc.poll() is None:
            if (ckpts / "latest").exists() and any(e.name.startswith(".tmp-step-") for e in os.scandir(ckpts)):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        left = [p.name for p in ckpts.glob(".tmp-step-*")] if ckpts.is_dir() else []
        if proc.returncode == -signal.SIGKILL and left:
            caught = left[0]
            break
        assert proc.returncode in (-signal.SIGKILL, 0), proc.returncode
        if proc.returncode == 0:
            break
    assert caught, "never caught the trainer while it wrote a checkpoint"

    previous = (ckpts / "latest").read_text().strip()
    assert previous < caught.removeprefix(".tmp-")  # the pointer still names a complete one

    results = launch(config, 1)
    log = results[0].stdout + results[0].stderr
    assert results[0].returncode == 0, log
    assert f"resumed from {ckpts / previous}" in log
    expected, got = final_weights(reference), final_weights(crashed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert train_losses(crashed) == train_losses(reference)
