"""Fixtures for the trainer's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tok():
    from trainer_helpers import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """Every trainer test starts as one process: no torchrun or SLURM variables from outside."""
    from trainer_helpers import DIST_VARS

    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
