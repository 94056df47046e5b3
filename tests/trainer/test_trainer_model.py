"""trainer.model, trainer.dist and the schedule: pure pieces and single forward passes on CPU."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
import torch
from trainer_helpers import TINY_LLAMA, tiny_job, validate

from ftcore.errors import UserError
from trainer import data as D
from ftcore import rendezvous
from trainer import dist
from trainer import model as M
from trainer.train import lr_at, preflight


def tiny_llama(attn="sdpa", seed=0, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {k: v for k, v in {**TINY_LLAMA, **overrides}.items() if k != "model_type"}
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **settings), attn_implementation=attn).eval()


def lora_cfg(**kw):
    from ftcore.schema import LoraConfig

    return LoraConfig(**kw)


# --- LoRA target globs --------------------------------------------------------------------------


def test_lora_globs_match_full_names_and_last_components():
    model = tiny_llama()
    assert len(M.lora_targets(model, lora_cfg(target_modules=["*_proj"]))) == 14  # 7 per layer × 2
    assert M.lora_targets(model, lora_cfg(target_modules="q_proj")) == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert len(M.lora_targets(model, lora_cfg(target_modules=["model.layers.1.*"]))) == 7
    assert len(M.lora_targets(model, lora_cfg(target_modules=["*.self_attn.*"]))) == 8
    assert "lm_head" in M.lora_targets(model, lora_cfg(target_modules=["*_proj", "lm_head"]))
    every = M.lora_targets(model, lora_cfg(match_all_linear=True, target_modules=["nothing"]))
    assert len(every) == 14 and "lm_head" not in every
    kept = M.lora_targets(model, lora_cfg(target_modules=["*_proj"], exclude_modules=["down_proj", "model.layers.0.*"]))
    assert len(kept) == 6 and all(".layers.1." in n and "down_proj" not in n for n in kept)


def test_a_glob_matching_nothing_names_the_real_modules():
    with pytest.raises(UserError) as e:
        M.lora_targets(tiny_llama(), lora_cfg(target_modules=["*_proj", "*.proj"]))
    message = str(e.value)
    assert "['*.proj']" in message and "q_proj" in message and "gate_proj" in message


# --- packing: no attention across examples, positions restart, same loss --------------------------


def _examples():
    rng = torch.Generator().manual_seed(0)
    lengths = [(7, 3), (5, 2), (9, 4)]  # (length, answer tokens at the end)
    out = []
    for n, answer in lengths:
        ids = torch.randint(3, 384, (n,), generator=rng, dtype=torch.int32)
        labels = ids.clone()
        labels[: n - answer] = D.IGNORE_INDEX
        out.append(D.Sample(ids, labels, (n,)))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_each_example_alone(attn):
    model = tiny_llama(attn)
    examples = _examples()
    (row,) = D.pack(examples, max_len=64)
    with torch.no_grad():
        packed = model.model(**{k: v for k, v in D.collate([row], 0, attn).items() if k != "labels"}).last_hidden_state[0]
        start = 0
        for ex in examples:
            alone = model.model(input_ids=ex.input_ids.long()[None]).last_hidden_state[0]
            # Token by token: every position sees exactly its own example's prefix.
            torch.testing.assert_close(packed[start : start + len(ex)], alone, atol=1e-5, rtol=1e-5)
            start += len(ex)

        loss = M.CausalLMLoss(model)
        packed_loss = loss(**D.collate([row], 0, attn))
        alone_loss = sum(loss(**D.collate([ex], 0, attn)) for ex in examples)
        padded_loss = loss(**D.collate(examples, 0, attn))  # unpacked batch, padded to the longest
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_loss, alone_loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2])  # 2: grouped-query attention
def test_padding_free_row_gives_the_padded_loss_and_gradients(kv_heads):
    from trainer import attention

    examples = _examples()
    examples.append(D.pack(_examples()[:2], max_len=64)[0])  # a packed row inside a micro batch
    whole = torch.randint(3, 384, (6,), dtype=torch.int32)
    examples.append(D.Sample(whole, whole.clone(), (6,)))  # loss on every token, the first included

    def loss_and_grads(attn, padding_free):
        model = tiny_llama(attn, num_key_value_heads=kv_heads)
        loss = M.CausalLMLoss(model)(**D.collate(examples, 0, "sdpa", padding_free=padding_free))
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    padded_loss, padded_grads = loss_and_grads("sdpa", padding_free=False)
    free_loss, free_grads = loss_and_grads(attention.register(), padding_free=True)
    torch.testing.assert_close(free_loss, padded_loss, atol=1e-5, rtol=1e-5)
    for free, padded in zip(free_grads, padded_grads, strict=True):
        torch.testing.assert_close(free, padded, atol=1e-5, rtol=1e-4)


def test_padding_free_collate_is_one_row_without_padding():
    examples = _examples()
    batch = D.collate(examples, 0, "sdpa", padding_free=True)
    assert batch["input_ids"].shape == (1, 7 + 5 + 9) and batch["seq_lens"] == [7, 5, 9]
    assert batch["position_ids"][0].tolist() == [*range(7), *range(5), *range(9)]
    assert "attention_mask" not in batch
    flash = D.collate(examples, 0, "flash_attention_2", padding_free=True)
    assert "seq_lens" not in flash  # flash-attention reads the boundaries from position_ids
    assert "seq_lens" not in D.collate(examples, 0, "eager", padding_free=True)  # eager pads


def test_padding_free_attention_is_not_written_to_checkpoints(tmp_path):
    from trainer import attention

    tiny_llama(attention.register()).save_pretrained(tmp_path)
    assert attention.NAME not in (tmp_path / "config.json").read_text()


def test_loss_counts_only_answer_tokens_and_matches_the_models_own():
    model = tiny_llama()
    examples = _examples()
    batch = D.collate(examples, 0)
    with torch.no_grad():
        ours = M.CausalLMLoss(model)(**batch)
        reference = model(**batch).loss  # transformers: mean over the same label positions
    n_answer = sum(ex.answer_tokens for ex in examples)
    assert n_answer == 3 + 2 + 4 - 3 + 3  # the first answer token of each is predicted, the last label is not shifted out
    torch.testing.assert_close(ours / n_answer, reference, atol=1e-5, rtol=1e-5)


def test_chunked_cross_entropy_matches_one_shot(monkeypatch):
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    config = type("C", (), {})()
    whole = M.answer_cross_entropy(head, hidden, targets, config)
    (g_whole,) = torch.autograd.grad(whole, hidden)
    monkeypatch.setattr(M.policy, "LOSS_CHUNK_TOKENS", 8)
    chunked = M.answer_cross_entropy(head, hidden, targets, config)
    (g_chunked,) = torch.autograd.grad(chunked, hidden)
    torch.testing.assert_close(whole, chunked)
    torch.testing.assert_close(g_whole, g_chunked)


# --- schedule ----------------------------------------------------------------------------------------


def _optim(name, warmup=0, min_lr=0.0):
    from ftcore.schema import OptimConfig

    return OptimConfig(lr=1.0, lr_scheduler={"name": name, "warmup_steps": warmup, "min_lr": min_lr})


def test_warmup_then_decay_to_min_lr():
    cosine = _optim("cosine", warmup=4, min_lr=0.1)
    assert [lr_at(s, 20, cosine) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert lr_at(5, 20, cosine) == 1.0 and lr_at(20, 20, cosine) == pytest.approx(0.1)
    mids = [lr_at(s, 20, cosine) for s in range(5, 21)]
    assert mids == sorted(mids, reverse=True)
    assert lr_at(11, 21, _optim("linear")) == pytest.approx(0.5)
    assert {lr_at(s, 10, _optim("constant", warmup=2)) for s in range(2, 11)} == {1.0}


# --- where am I: torchrun, SLURM, alone ----------------------------------------------------------------


def test_detect_torchrun_slurm_and_single():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1"}
    assert dist.detect(torchrun) == dist.DistEnv(3, 4, 1, "n1", 1234, "torchrun")
    got = dist.detect(slurm)
    assert (got.rank, got.world_size, got.local_rank, got.master_addr, got.launcher) == (5, 8, 1, "gpu07", "slurm")
    assert got.master_port == rendezvous.master_port(4242)
    exported = dist.detect({**slurm, "MASTER_ADDR": "head", "MASTER_PORT": "29400"})
    assert (exported.master_addr, exported.master_port) == ("head", 29400)
    assert dist.detect({**slurm, **torchrun}).launcher == "torchrun"  # torchrun's variables win
    assert dist.detect({}) == dist.DistEnv()


def test_config_only_rules_are_the_schemas_and_all_are_reported():
    from ftcore.schema import validate as schema_validate

    with pytest.raises(UserError) as e:
        schema_validate(tiny_job(peft=None, model={"quantization": "nf4", "cpu_offload": True},
                                 trainer={"strategy": "ddp"}))
    for problem in ("nf4 (QLoRA) quantizes a frozen base: it needs peft=lora", "cpu_offload moves FSDP2 shards",
                    "a CPU job (trainer.accelerator=cpu) has none to free"):
        assert problem in str(e.value)


def test_preflight_checks_what_only_the_machine_knows():
    job = validate(tiny_job(trainer={"devices": 2}, model={"path": "/nowhere/model", "init": "pretrained"},
                            data={"global_batch_size": 8}))
    with pytest.raises(UserError) as e:
        preflight(job, dist.DistEnv())
    assert "2 processes, but 1 were started" in str(e.value)
    assert "model.path /nowhere/model does not exist" in str(e.value)
