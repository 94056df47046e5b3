"""trainer.data: the job's data, with its held-out validation set."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from trainer_helpers import SQUAD, write_jsonl

from trainer import data


def _cfg(**kw):
    from ftcore.schema import DataConfig

    return DataConfig(**{"path": "ft:tiny_qa.jsonl", "format": "squad", "max_seq_length": 64, **kw})


def test_val_fraction_holds_out_the_same_records_every_time(tok):
    a = data.load(_cfg(val_fraction=0.1), tok, seed=3)
    b = data.load(_cfg(val_fraction=0.1), tok, seed=3)
    c = data.load(_cfg(val_fraction=0.1), tok, seed=4)
    assert (len(a.train), len(a.val)) == (180, 20)
    assert [s.input_ids.tolist() for s in a.val] == [s.input_ids.tolist() for s in b.val]
    assert [s.input_ids.tolist() for s in a.val] != [s.input_ids.tolist() for s in c.val]
    train_ids = {tuple(s.input_ids.tolist()) for s in a.train}
    assert not any(tuple(s.input_ids.tolist()) in train_ids for s in a.val)


def test_val_path_and_limit_samples(tmp_path, tok):
    val = write_jsonl(tmp_path / "val.jsonl", [SQUAD] * 3)
    d = data.load(_cfg(val_path=str(val), limit_samples=10), tok, seed=0)
    assert (len(d.train), len(d.val)) == (10, 3)
    assert "10 training rows, 3 validation examples" in d.summary()
