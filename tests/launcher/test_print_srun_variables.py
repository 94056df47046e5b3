"""`--print-srun` with `model.path=$MODEL_DIR`: the line expands the batch script's variable
when pasted, and ft neither probes the hub nor plans a staging of the literal "$MODEL_DIR"."""

from __future__ import annotations

import subprocess

from ftcore import hub
from launcher import config


def test_a_variable_in_an_override_expands_when_the_line_is_pasted(ft):
    result = ft("submit", "--dry-run", "--print-srun", "--factory", "llama31_8b", "model.path=$MODEL_DIR",
                "model.tokenizer=${TOK}/tok", "description=a $(touch /tmp/ft-pwned) `id` b")
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    words = out.split("python -m launcher train ", 1)[1].splitlines()[0]
    pasted = subprocess.run(["bash", "-c", f"MODEL_DIR=/models/x TOK=/t; printf '%s\\n' {words}"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert pasted == ["--factory", "llama31_8b", "model.path=/models/x", "model.tokenizer=/t/tok",
                      "description=a $(touch /tmp/ft-pwned) `id` b"]
    assert "is a shell variable, expanded where the job runs" in result.stderr
    assert "could not be reached" not in result.stderr  # no hub probe for "$MODEL_DIR"


def test_a_variable_is_no_hub_id_to_stage():
    job = config.resolve("llama31_8b", ["model.path=$MODEL_DIR"]).job
    assert "$MODEL_DIR" not in [a.repo_id for a in hub.artefacts(job)]
