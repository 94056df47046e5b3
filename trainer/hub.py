"""The Hugging Face hub token: read from the environment only, so ft never writes it anywhere."""

from __future__ import annotations

import os


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None
