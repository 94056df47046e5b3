"""A checkpoint is data: a tampered DCP index (ft_state/dcp/.metadata) is refused, never run.

torch's own reader unpickles that index with plain pickle; ft reads it with an unpickler that
admits only what DCP writes. Each way a user opens a checkpoint is tried: the trainer resuming
(`python -m trainer`) and the after-training commands on the login node.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from post_helpers import one_thread, run_ft, train_job
from trainer_helpers import REPO, clean_env

from ftcore import exits, layout
from ftcore.errors import UserError
from trainer.checkpointing import read_state_index

pytestmark = pytest.mark.train


class _Payload:
    """Pickles as a call of os.system: whoever unpickles it with plain pickle runs the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _tamper(checkpoint, marker):
    """Hide the payload inside the checkpoint's otherwise honest index."""
    index = checkpoint / layout.TRAINING_STATE / "dcp" / ".metadata"
    metadata = read_state_index(index.parent)
    metadata.planner_data = {"x": _Payload(marker)}
    index.write_bytes(pickle.dumps(metadata))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with one_thread():
        home = tmp_path_factory.mktemp("home")
        train_job(home, "lora", checkpoint={"every_steps": 1})
        yield home


@pytest.fixture
def tampered(home, tmp_path):
    """A copy of the job whose only checkpoint (step 1, distributed state only) carries a payload."""
    job = tmp_path / "jobs" / "lora"
    shutil.copytree(home / "jobs" / "lora", job)
    shutil.rmtree(layout.step_dir(job / layout.CHECKPOINTS, 2))
    (job / layout.CHECKPOINTS / layout.LATEST).write_text("step-000001\n")
    marker = tmp_path / "payload-ran"
    _tamper(layout.step_dir(job / layout.CHECKPOINTS, 1), marker)
    return job, marker


def test_an_honest_index_reads_as_torch_reads_it(home):
    from torch.distributed.checkpoint import FileSystemReader

    dcp_dir = layout.step_dir(home / "jobs" / "lora" / layout.CHECKPOINTS, 1) / layout.TRAINING_STATE / "dcp"
    ours, torchs = read_state_index(dcp_dir), FileSystemReader(str(dcp_dir)).read_metadata()
    torchs.storage_meta.load_id = None
    assert ours == torchs


def test_an_index_from_a_python_that_pickles_enums_by_getattr_reads(home, monkeypatch):
    """Python 3.11.0-3.11.4 (Debian 12's 3.11.2, so many images) pickle an Enum member as
    getattr(cls, name): the index's own enum, by a member's name, is data."""
    import enum

    dcp_dir = layout.step_dir(home / "jobs" / "lora" / layout.CHECKPOINTS, 1) / layout.TRAINING_STATE / "dcp"
    honest = read_state_index(dcp_dir)
    monkeypatch.setattr(enum.Enum, "__reduce_ex__", lambda self, proto: (getattr, (self.__class__, self._name_)))
    data = pickle.dumps(honest)
    assert b"getattr" in data and b"_MEM_FORMAT_ENCODING" in data
    monkeypatch.undo()
    again = home / "getattr-dcp"
    again.mkdir(exist_ok=True)
    (again / ".metadata").write_bytes(data)
    assert read_state_index(again) == honest


@pytest.mark.parametrize("owner, name", [("subprocess.Popen", "__init__"), ("shutil.Error", "__init__"),
                                         ("metadata.Metadata", "__init__"), ("metadata._MEM_FORMAT_ENCODING", "__init__"),
                                         ("metadata._MEM_FORMAT_ENCODING", "NOT_A_MEMBER")])
def test_getattr_of_anything_but_an_index_enum_member_is_refused(tmp_path, owner, name):
    from torch.distributed.checkpoint import metadata

    where, _, cls = owner.partition(".")
    owner = getattr({"subprocess": subprocess, "shutil": shutil, "metadata": metadata}[where], cls)

    class Calls:
        def __reduce__(self):
            return getattr, (owner, name)

    dcp_dir = tmp_path / "dcp"
    dcp_dir.mkdir()
    (dcp_dir / ".metadata").write_bytes(pickle.dumps([torch.Size([2]), Calls()]))
    with pytest.raises(UserError, match="not an index torch.distributed.checkpoint writes.*nothing in it ran"):
        read_state_index(dcp_dir)


@pytest.mark.parametrize("callable_", [os.system, eval, subprocess.Popen, torch.load, shutil.rmtree])
def test_any_other_callable_in_the_index_is_refused(tmp_path, callable_):
    class Calls:
        def __reduce__(self):
            return callable_, ("x",)

    dcp_dir = tmp_path / "dcp"
    dcp_dir.mkdir()
    (dcp_dir / ".metadata").write_bytes(pickle.dumps([torch.Size([2]), torch.float32, Calls()]))
    with pytest.raises(UserError, match="not an index torch.distributed.checkpoint writes.*nothing in it ran"):
        read_state_index(dcp_dir)


def test_resume_from_a_tampered_checkpoint_stops_with_exit_2(tampered):
    job, marker = tampered
    result = subprocess.run([sys.executable, "-m", "trainer", "--config", str(job / layout.CONFIG)], cwd=REPO,
                            env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == exits.USER_ERROR, result.stderr
    assert "is not an index torch.distributed.checkpoint writes" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert layout.newest_complete(job).name == "step-000001"  # nothing trained, nothing written


@pytest.mark.parametrize("command", [["export", "--to", "vllm"], ["merge"], ["eval", "--limit", "1"],
                                     ["generate", "Hello"]], ids=lambda c: c[0])
def test_login_node_commands_refuse_a_tampered_checkpoint(tampered, command):
    job, marker = tampered
    code, _, err = run_ft(command[0], str(job), *command[1:])
    assert code == exits.USER_ERROR, err
    assert "is not an index torch.distributed.checkpoint writes" in err and "Traceback" not in err
    assert not marker.exists()
    assert layout.kind_of(layout.step_dir(job / layout.CHECKPOINTS, 1)) is None  # no model files made


def test_push_dry_run_refuses_a_tampered_checkpoint(tampered, ft):
    job, marker = tampered
    result = ft("push", str(job), "me/tiny", "--dry-run", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == exits.USER_ERROR, result.stderr
    assert "is not an index torch.distributed.checkpoint writes" in result.stderr
    assert not marker.exists()
