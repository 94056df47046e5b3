"""An AutoModel recipe's translation is printed before anything is said against the job, and
the `slurm:` block AutoModel (≤ 0.6) recipes carry becomes ft's slurm settings."""

from __future__ import annotations

from pathlib import Path

import yaml

RECIPES = Path(__file__).parent / "automodel"
SLURM_BLOCK = {"job_name": "llm-finetune", "nodes": 2, "ntasks_per_node": 8, "gpus_per_node": 8,
               "time": "00:30:00", "account": "acct", "partition": "debug", "container_image": "/img/nemo.sqsh",
               "extra_mounts": ["/lustre:/lustre"], "hf_home": "/lustre/hf"}


def with_slurm(tmp_path: Path, **block) -> Path:
    recipe = yaml.safe_load((RECIPES / "peft_guide.yaml").read_text())
    recipe["slurm"] = {**SLURM_BLOCK, **block}
    path = tmp_path / "with_slurm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_the_translation_comes_before_the_problems(ft):
    for command in ("show", "submit"):
        result = ft(command, "--factory", str(RECIPES / "qlora_guide.yaml"), *(["--dry-run"] if command == "submit" else []))
        assert result.returncode == 2
        err = result.stderr
        assert "translated the NeMo AutoModel recipe" in err and "container.image" in err
        assert err.index("translated the NeMo AutoModel recipe") < err.index("ft: error:")
        assert "quantization.load_in_4bit → model.quantization=nf4" in err


def test_a_refused_key_shows_the_rest_of_the_translation_too(ft, tmp_path):
    path = with_slurm(tmp_path, gpus_per_node=4)  # 4 GPUs, 8 tasks: not one task per GPU
    result = ft("show", "--factory", str(path))
    assert result.returncode == 2
    assert "slurm.gpus_per_node: 4 GPUs with 8 tasks per node" in result.stderr
    assert result.stderr.index("slurm.partition → slurm.partition=debug") < result.stderr.index("ft: error:")


def test_the_slurm_block_becomes_fts_settings(ft, tmp_path):
    result = ft("submit", "--dry-run", "--factory", str(with_slurm(tmp_path)), "container.runtime=none",
                "trainer.max_steps=10")
    assert result.returncode == 0, result.stderr
    for line in ("--job-name=llm-finetune", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8",
                 "--time=00:30:00", "--account=acct", "--partition=debug"):
        assert f"#SBATCH {line}" in result.stdout
    assert "slurm.hf_home: ignored" in result.stderr
    assert "× 16 rank(s) → data.global_batch_size=512" in result.stderr  # 8 × 4 accumulation × 2 nodes × 8 GPUs
    shown = yaml.safe_load(ft("show", "--factory", str(with_slurm(tmp_path))).stdout)
    assert shown["container"]["image"] == "/img/nemo.sqsh" and shown["container"]["binds"] == ["/lustre:/lustre"]
