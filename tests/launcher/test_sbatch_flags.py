"""`slurm.extra` flags as a recipe writes them: true is the bare flag, false leaves it out
(tests/slurm/test_sbatch_options.py hands the rendered script to the real `sbatch --test-only`)."""

from __future__ import annotations

from pathlib import Path

from launcher import config, render


def test_a_flag_set_true_renders_bare_and_false_renders_nothing(tmp_path):
    recipe = tmp_path / "site.yaml"
    recipe.write_text("extends: tiny\nslurm:\n  extra:\n    exclusive: true\n    overcommit: false\n"
                      "    requeue-limit: null\n    nice: 10\n")
    job = config.resolve(str(recipe), []).job
    lines = render.sbatch_options(job, Path("/JOB_DIR"))
    assert "--exclusive" in lines and "--nice=10" in lines
    assert not any(line.startswith("--overcommit") for line in lines)
    assert not any(line.endswith("=true") or line.endswith("=false") for line in lines)
