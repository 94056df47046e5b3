"""The policy's rules, torch-free: globs as the source documents write them, and the decisions.

That the trainer builds what a decision says is tests/trainer/test_plan_vs_trainer.py's job.
"""

from __future__ import annotations

import pytest

from ftcore import arch, families, policy
from ftcore.errors import UserError
from ftcore.policy import Topology
from launcher import config, plan

LLAMA = arch.dims_from_config(arch.PUBLISHED["meta-llama/Llama-3.2-1B"], "published")
PROJECTIONS = set(families.LLAMA_ATTENTION + families.LLAMA_MLP)


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
    assert adapted(target_modules="'*.self_attn.*'") == set(families.LLAMA_ATTENTION)
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


def test_a_glob_meant_for_moe_experts_says_how_experts_are_adapted():
    """Experts are 3-D weights, not linear layers: a name that matches none in a MoE family
    points at peft.experts; in a dense family there is no such hint."""
    names = [f"model.layers.0.self_attn.{p}" for p in families.LLAMA_ATTENTION]
    with pytest.raises(UserError) as moe:
        policy.lora_targets(names, arch.HEAD, peft(target_modules="[experts]"), "mixtral")
    assert "peft.experts=true" in moe.value.hint and "gate_up_proj" in moe.value.hint
    with pytest.raises(UserError) as dense:
        policy.lora_targets(names, arch.HEAD, peft(target_modules="[experts]"), "llama")
    assert dense.value.hint is None


TOPOLOGIES = [None, Topology(1, 2, "ddp", "gpu"), Topology(2, 8, "fsdp2", "gpu"), Topology(1, 1, "ddp", "cpu")]


@pytest.mark.parametrize("info", config.list_factories(), ids=lambda i: i.name)
def test_every_shipped_job_on_every_topology_keeps_the_policys_promises(info):
    """What each rule is for, checked on every shipped factory and several topologies (rather than
    a table that restates decide()): the step's batch arithmetic agrees with the schema's, CPUs
    compute in fp32, trained state is never narrower than the compute dtype, LoRA's trained state
    is fp32, and a gradient a rank holds whole is one the plan prices whole."""
    job = config.resolve(info.name, []).job
    for topology in TOPOLOGIES:
        d = policy.decide(job, topology)
        where = f"{info.name} on {d.topology}"
        world = d.topology.world
        if topology is None:  # the schema computes the job's own accumulation (Job.grad_accum_steps)
            assert d.accum_steps == job.grad_accum_steps, where
        if job.data.global_batch_size % (job.data.micro_batch_size * world) == 0:
            assert d.accum_steps * job.data.micro_batch_size * world == job.data.global_batch_size, where
        if not d.topology.on_gpu:
            assert d.compute == "fp32", where
        assert policy.DTYPE_BYTES[d.trained] >= policy.DTYPE_BYTES[d.compute], where
        assert d.grad == d.optim == d.trained, where  # gradients and moments live beside the trained weights
        if d.lora:
            assert d.trained == "fp32" and d.frozen == d.compute and not d.master_weights, where
        if d.sharded and not d.lora:  # reduce-scattered per micro batch: no rank ever holds a whole gradient
            assert d.grad_sync == "micro_batch" and not d.grads_unsharded, where
        if not d.sharded:
            assert d.grads_unsharded, where
        assert d.describe()[0] == f"compute in {d.compute}", where


def test_the_largest_job_resolves_its_targets_and_shards_its_nf4_base():
    big = config.resolve("llama31_405b_lora", []).job
    d = policy.decide(big, dims=plan.model_dims(big))
    assert d.quantization == "nf4" and d.sharded and d.grads_unsharded
    assert len(d.lora_targets) == 126 * 4  # q, k, v, o of every layer: the factory's target_modules
    assert policy.decide(big).lora_targets is None  # no dims given: the trainer resolves them


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


def test_every_family_has_its_shapes_and_every_shape_its_family():
    """Two registries keyed by `model_type`: what a family is (ftcore.families) and how its tensors
    are laid out (ftcore.arch). A family added to one only would be trained unpriced, or priced
    without its LoRA targets and attention path."""
    assert set(arch.SHAPES) == set(families.FAMILIES)
