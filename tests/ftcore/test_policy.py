"""The policy's rules, torch-free: globs as the source documents write them, and the decisions.

That the trainer builds what a decision says is tests/trainer/test_plan_vs_trainer.py's job.
"""

from __future__ import annotations

import pytest

from ftcore import arch, policy
from ftcore.errors import UserError
from ftcore.policy import Topology
from launcher import config, plan

LLAMA = arch.dims_from_config(arch.PUBLISHED["meta-llama/Llama-3.2-1B"], "published")
PROJECTIONS = set(arch.ATTENTION + arch.MLP)


def peft(**fields):
    return config.resolve("llama32_1b_squad", [f"peft.{k}={v}" for k, v in fields.items()]).job.peft


def adapted(**fields) -> set[str]:
    """The kinds of layer (last name component) a peft section adapts on Llama 3.2 1B."""
    return {n.rsplit(".", 1)[-1] for n in policy.lora_targets(LLAMA.linear_names(), arch.HEAD, peft(**fields))}


@pytest.mark.parametrize("glob", ["*.proj", "*_proj", "'*proj'"])
def test_every_projection_as_nemo_automodel_users_write_it(glob):
    assert adapted(target_modules=glob) == PROJECTIONS  # and never the output head


def test_other_forms_of_the_source_documents():
    assert adapted(target_modules="[q_proj,v_proj]") == {"q_proj", "v_proj"}
    assert adapted(target_modules="'*.self_attn.*'") == set(arch.ATTENTION)
    only_layer_0 = policy.lora_targets(LLAMA.linear_names(), arch.HEAD, peft(target_modules="'*.layers.0.*.q_proj'"))
    assert only_layer_0 == ["model.layers.0.self_attn.q_proj"]
    assert adapted(match_all_linear="true") == PROJECTIONS  # the head excluded, unlike AutoModel's
    assert adapted(target_modules="'*'", exclude_modules="'*.lm_head'") == PROJECTIONS
    assert adapted(target_modules="[q_proj,lm_head]") == {"q_proj", "lm_head"}


def test_a_glob_matching_nothing_is_an_error_naming_the_layers():
    with pytest.raises(UserError, match=r"\['attn\.\*'\] match no linear layer.*q_proj"):
        adapted(target_modules="[q_proj,attn.*]")
    with pytest.raises(UserError, match="every targeted layer is excluded"):
        adapted(target_modules="q_proj", exclude_modules="'*'")


def test_the_decisions_of_each_layout():
    lora = config.resolve("llama31_8b", []).job
    d = policy.decide(lora)
    assert (d.compute, d.frozen, d.trained, d.grad, d.optim, d.grad_sync) == ("bf16", "bf16", "fp32", "fp32", "fp32", "step")
    assert d.grads_unsharded and not d.master_weights and d.lora_targets is None  # no dims given: the trainer resolves
    sft = config.resolve("llama3_8b_sft", []).job
    d = policy.decide(sft)
    assert (d.trained, d.grad_sync, d.master_weights, d.grads_unsharded) == ("fp32", "micro_batch", True, False)
    ddp_sft = policy.decide(sft, Topology(1, 2, "ddp", "gpu"))
    assert (ddp_sft.trained, ddp_sft.master_weights, ddp_sft.grads_unsharded) == ("bf16", False, True)
    cpu = policy.decide(config.resolve("tiny", []).job)
    assert cpu.compute == cpu.trained == "fp32"
    big = config.resolve("llama31_405b_lora", []).job
    d = policy.decide(big, dims=plan.model_dims(big))
    assert d.quantization == "nf4" and d.sharded and d.accum_steps == 2 and d.grads_unsharded
    assert len(d.lora_targets) == 126 * 4
    one_micro_batch = policy.decide(big, Topology(2, 8, "fsdp2", "gpu"))
    assert one_micro_batch.accum_steps == 1 and not one_micro_batch.grads_unsharded


def test_nf4_holds_whole_scaler_blocks_in_every_shard():
    assert policy.nf4_fits(4096, 4096, 8) and policy.nf4_fits(256, 256, 2)
    assert not policy.nf4_fits(64, 64)  # 4096 values: less than one 64 × 256 block of scales
    assert not policy.nf4_fits(256, 64, 2)  # 16384 values, but each of 2 shards would hold half a block
    assert not policy.nf4_fits(1024 + 8, 256 * 64, 16)  # rows do not split evenly
    # 65,536 values: 32 KiB of codes, 1 KiB of scales, 4 scales of scales, a mean and the table.
    assert policy.nf4_bytes(65536, 4) == 32768 + 1024 + (4 + 1 + 16) * 4


def test_shards_split_rows_like_torch_chunk():
    assert [policy.shard_rows(10, 4, r) for r in range(4)] == [3, 3, 3, 1]
    assert [policy.shard_rows(2, 4, r) for r in range(4)] == [1, 1, 0, 0]
    assert policy.shard_rows(7, 1) == 7
