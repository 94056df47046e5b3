"""What a CKPT argument names, and output folders that appear whole or not at all. No torch:
the folders here hold the files that tell checkpoints apart, not real weights."""

from __future__ import annotations

import json
import struct

import pytest

from ftcore import files, layout
from launcher import jobdir, locate
from ftcore.errors import UserError


def _job(root, name, steps=(), kind="lora", latest=True, job_id=None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / jobdir.CONFIG).write_text("name: tiny\ndata: {format: squad}\n")
    if job_id:
        jobdir.write_record(folder, executor="slurm", job_id=job_id)
    for step in steps:
        ckpt = folder / "checkpoints" / f"step-{step:06d}"
        ckpt.mkdir(parents=True)
        if kind == "lora":
            (ckpt / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base", "r": 8}))
        else:
            (ckpt / "config.json").write_text("{}")
            (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")  # no tensors
        (ckpt / "ft_state").mkdir()
        (ckpt / "ft_state" / "trainer_state.json").write_text(json.dumps({"step": step}))
        (ckpt / "ft_state" / "COMPLETE").write_text(f"step {step}\n")
    if steps and latest:
        (folder / "checkpoints" / "latest").write_text(f"step-{steps[-1]:06d}\n")
    return folder


@pytest.fixture
def root(isolated_home):
    return isolated_home / "jobs"


def test_a_job_by_id_prefix_or_folder_gives_its_newest_checkpoint(root):
    folder = _job(root, "20260101-000000-tiny-aaaaaa", steps=(20, 40), job_id="777123")
    newest = folder / "checkpoints" / "step-000040"
    for spec in ("777123", "7771", "20260101-000000", str(folder), str(folder / "checkpoints")):
        ckpt = locate.find_checkpoint(spec)
        assert (ckpt.path, ckpt.kind, ckpt.run_dir) == (newest, layout.LORA, folder), spec
    assert ckpt.base == "/models/base" and ckpt.job_config["data"]["format"] == "squad"
    assert ckpt.label == "20260101-000000-tiny-aaaaaa-step-000040"
    assert ckpt.default_output("merged") == folder / "exports" / "step-000040-merged"


def test_a_checkpoint_folder_names_itself(root, tmp_path):
    folder = _job(root, "20260101-000000-tiny-aaaaaa", steps=(20, 40), kind="full")
    older = locate.find_checkpoint(str(folder / "checkpoints" / "step-000020"))
    assert older.kind == layout.FULL and older.run_dir == folder and older.base is None
    loose = tmp_path / "somewhere" / "my-model"
    loose.mkdir(parents=True)
    (loose / "config.json").write_text("{}")
    (loose / "model.safetensors.index.json").write_text("{}")
    ckpt = locate.find_checkpoint(str(loose))
    assert ckpt.run_dir is None and ckpt.job_config == {} and ckpt.label == "my-model"
    assert ckpt.default_output("vllm") == tmp_path / "somewhere" / "my-model-vllm"


def test_model_files_leave_out_the_training_state(root):
    folder = _job(root, "20260101-000000-tiny-aaaaaa", steps=(5,))
    names = [p.name for p in layout.model_files(folder / "checkpoints" / "step-000005")]
    assert names == ["adapter_config.json"]


def test_what_cannot_be_resolved_says_why(root, tmp_path):
    _job(root, "20260101-000000-tiny-aaaaaa")
    with pytest.raises(UserError, match="has no complete checkpoint yet"):
        locate.find_checkpoint("20260101-000000")
    _job(root, "20260101-000001-tiny-bbbbbb", steps=(5,))
    with pytest.raises(UserError, match="matches 2 jobs"):
        locate.find_checkpoint("20260101")
    with pytest.raises(UserError, match="no job 'nothing'"):
        locate.find_checkpoint("nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a checkpoint"):
        locate.find_checkpoint(str(tmp_path / "empty"))
    sweep = _job(root, "20260101-000002-sweep-cccccc")
    for task in ("0", "1"):
        _job(sweep / "tasks", task, steps=(5,))
    with pytest.raises(UserError, match="a sweep of 2 runs"):
        locate.find_checkpoint(str(sweep))
    assert locate.find_checkpoint(str(sweep / "tasks" / "1")).label == "20260101-000002-sweep-cccccc-task1-step-000005"


def test_output_folder_appears_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with files.output_folder(out) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with files.output_folder(out) as tmp:
        (tmp / "whole").write_text("x")
        assert not out.exists()
    assert [p.name for p in out.iterdir()] == ["whole"]
    with pytest.raises(UserError, match="not empty"):
        files.check_output(out)
