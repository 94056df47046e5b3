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


def test_the_token_cache_gives_back_what_tokenizing_gives_and_its_key_follows_the_inputs(tok, tmp_path):
    import torch

    cfg = _cfg(packing=True, val_fraction=0.1)
    made = data.load(cfg, tok, seed=3, cache=tmp_path)
    read = data.load(cfg, tok, seed=3, cache=tmp_path)
    assert "tokenized once, read from" in read.summary()
    for a, b in zip(made.train + made.val, read.train + read.val, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels) and a.seq_lens == b.seq_lens

    key = data.cache_key(cfg, tok, 3)
    file = write_jsonl(tmp_path / "one.jsonl", [SQUAD])
    assert len({key, data.cache_key(_cfg(packing=False, val_fraction=0.1), tok, 3), data.cache_key(cfg, tok, 4),
                data.cache_key(_cfg(path=str(file)), tok, 3)}) == 4
    before = data.cache_key(_cfg(path=str(file)), tok, 3)
    write_jsonl(file, [SQUAD, SQUAD])  # same name, new contents
    assert data.cache_key(_cfg(path=str(file)), tok, 3) != before
    from trainer_helpers import tiny_tokenizer

    other = tiny_tokenizer()  # (not the module's shared one)
    assert data.cache_key(cfg, other, 3) == key
    other.add_tokens(["brandnew"])
    assert data.cache_key(cfg, other, 3) != key
