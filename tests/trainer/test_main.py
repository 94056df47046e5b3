"""`python -m trainer --config`: bad configs and bad data exit 2 with a message and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from trainer_helpers import REPO, clean_env, tiny_job, write_config


def trainer_cli(config, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(config)],
        cwd=REPO, env=clean_env(**env), capture_output=True, text=True, timeout=120,
    )


def test_invalid_config_exits_2_without_importing_torch(tmp_path):
    raw = tiny_job(trainer={"max_step": 3}, optim={"lr": -1})
    config = write_config(tmp_path, raw)
    probe = (
        "import sys; from trainer.__main__ import main; code = main(['--config', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported for a config error'; sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(config)], cwd=REPO, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "trainer.max_step" in result.stderr and "optim.lr" in result.stderr  # every problem at once
    assert "Traceback" not in result.stderr


def test_unreadable_config_exits_2(tmp_path):
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    result = trainer_cli(tmp_path / "config.yaml")
    assert result.returncode == 2 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr
    result = trainer_cli(tmp_path / "missing.yaml")
    assert result.returncode == 2 and "cannot read" in result.stderr


@pytest.mark.train
def test_malformed_data_exits_2_naming_file_line_and_key(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    config = write_config(tmp_path / "job", tiny_job(data={"path": str(data), "format": "jsonl"}))
    result = trainer_cli(config)
    assert result.returncode == 2, result.stderr
    assert f"{data} line 2: missing 'completion'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "job" / "checkpoints").exists()
    assert yaml.safe_load(config.read_text())["data"]["path"] == str(data)
