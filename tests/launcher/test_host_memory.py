"""CPU offload's host memory, totalled per node and checked against slurm.mem; the 405B factory
asks for its host memory by size, not `--mem=0`."""

from __future__ import annotations

import pytest

from launcher import config, plan


def job(*overrides: str):
    return config.resolve("llama31_405b_lora", ["container.runtime=none", *overrides]).job


def test_offload_is_totalled_per_node_and_checked_against_slurm_mem():
    offload = job("model.cpu_offload=true")
    est = plan.estimate(offload)
    per_rank = sum(r.bytes for r in est.rows if not r.on_device)
    assert plan.host_per_node(est) == pytest.approx(8 * (per_rank + plan.HOST_PER_RANK_GIB * plan.GIB))
    line = plan.host_lines(offload, est)[0]
    assert "× 8 ranks" in line and "≈ 273 GiB per node, within slurm.mem=400G" in line
    small = job("model.cpu_offload=true", "slurm.mem=200G")
    assert any("273 GiB of host memory per node" in p for p in plan.refusals(small))
    assert not plan.refusals(small, force=True)
    unset = job("model.cpu_offload=true", "slurm.mem=null")
    assert "slurm.mem=274G asks for it" in plan.host_lines(unset, plan.estimate(unset))[0]
    assert plan.host_lines(job(), plan.estimate(job())) == []  # nothing offloaded


def test_sbatch_memory_sizes_are_read_as_sbatch_reads_them():
    assert plan.slurm_mem_bytes("400G") == 400 * 2**30
    assert plan.slurm_mem_bytes("512000") == 512000 * 2**20  # megabytes by default
    assert plan.slurm_mem_bytes("1T") == 2**40
    assert plan.slurm_mem_bytes("0") is None and plan.slurm_mem_bytes(None) is None


def test_the_405b_factory_asks_for_memory_by_size(ft):
    result = ft("submit", "--dry-run", "--factory", "llama31_405b_lora", "container.runtime=none")
    assert "#SBATCH --mem=400G" in result.stdout and "--mem=0" not in result.stdout
