"""`ft plan`'s time estimate (FLOPs at a stated MFU) and `slurm.time: auto`, which `ft submit`
sets from it with a margin where the recipe sets no time."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import config, plan

RECIPES = Path(__file__).parent / "automodel"
QLORA = str(RECIPES / "qlora_guide.yaml")


def job(factory: str, *overrides: str):
    return config.resolve(factory, ["container.runtime=none", *overrides]).job


def test_the_limit_is_the_estimate_with_its_margin_rounded_up():
    assert plan.Timing(1.0, 10, 3600.0, "").limit() == "01:40:00"  # 1 h × 1.5 + 10 min
    assert plan.Timing(1.0, 10, 20 * 3600.0, "").limit() == "1-06:10:00"
    assert plan.Timing(1.0, None, None, "").limit() is None


def test_flops_count_what_each_method_computes():
    sft = job("llama31_8b", "peft=none", "trainer.devices=8", "model.activation_checkpointing=false")
    lora = job("llama31_8b", "trainer.devices=8", "data.global_batch_size=8", "model.activation_checkpointing=false")
    full = plan.timing(sft, plan.estimate(sft))
    adapters = plan.timing(lora, plan.estimate(lora))
    est = plan.estimate(lora)
    tokens = lora.data.global_batch_size * lora.data.max_seq_length
    attention = 6 * est.dims.layers * est.dims.hidden * lora.data.max_seq_length
    expected = (4 * est.params + 6 * est.trainable + attention) * tokens / (8 * 989e12 * plan.MFU)
    assert adapters.step_s == pytest.approx(expected)
    assert full.step_s > adapters.step_s  # 6N against 4N + 6n
    recomputed = job("llama31_8b", "trainer.devices=8", "data.global_batch_size=8",
                     "model.activation_checkpointing=true")
    assert plan.timing(recomputed, plan.estimate(recomputed)).step_s > adapters.step_s
    a100 = job("llama31_8b", "trainer.devices=8", "data.global_batch_size=8", "trainer.gpu_type=a100",
               "model.activation_checkpointing=false")
    assert plan.timing(a100, plan.estimate(a100)).step_s == pytest.approx(expected * 989 / 312)


def test_ft_plan_prints_the_time_and_what_slurm_time_becomes(ft):
    shown = ft("plan", "--factory", QLORA, "container.runtime=none", "trainer.max_steps=100")
    assert shown.returncode == 0, shown.stderr
    assert "time: ≈ 17 s per step" in shown.stdout and "at 20% MFU of 1 × h100" in shown.stdout
    assert "× 100 steps ≈ 28 min" in shown.stdout
    assert "slurm.time: auto → 00:55:00 (the estimate 28 min × 1.5 + 10 min" in shown.stdout


def test_submit_sets_the_time_only_where_the_recipe_does_not(ft):
    timed = ft("submit", "--dry-run", "--factory", QLORA, "container.runtime=none", "trainer.max_steps=100")
    assert timed.returncode == 0, timed.stderr
    assert "#SBATCH --time=00:55:00" in timed.stdout and "slurm.time: auto → 00:55:00" in timed.stderr
    unknown = ft("submit", "--dry-run", "--factory", QLORA, "container.runtime=none")  # epochs of a hub dataset
    assert "#SBATCH --time=01:00:00" in unknown.stdout and "no estimate of the whole run" in unknown.stderr
    given = ft("submit", "--dry-run", "--factory", "llama31_8b", "container.runtime=none")
    assert "#SBATCH --time=02:00:00" in given.stdout and "slurm.time: auto" not in given.stderr
