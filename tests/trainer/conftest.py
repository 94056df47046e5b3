"""Fixtures for the trainer's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tok():
    from trainer_helpers import tiny_tokenizer

    return tiny_tokenizer()
