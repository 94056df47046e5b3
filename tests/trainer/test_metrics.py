"""metrics.jsonl on resume: the records after the resumed-from step are dropped by a rewrite
that is whole or not at all, whenever the trainer is killed or the disk fills."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
from fault_injection import FAIL, KILL, every_write

from trainer.metrics import Metrics


@pytest.mark.parametrize("mode", [KILL, FAIL])
def test_the_rewrite_on_resume_leaves_the_old_file_or_the_new(mode, tmp_path):
    path = tmp_path / "metrics.jsonl"
    old = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 9)) + '{"step": 9, "lo'
    new = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 5))
    job = SimpleNamespace(trainer=SimpleNamespace(tensorboard=False, wandb_project=None))

    def work() -> None:
        Metrics(tmp_path, job, is_main=True, resume_step=4).close()

    def check(at: int, outcome: str) -> None:
        assert path.read_text() in (old, new), f"write {at} ({outcome})"

    writes = every_write(work, check, mode, reset=lambda: path.write_text(old))
    assert writes >= 3 and path.read_text() == new
