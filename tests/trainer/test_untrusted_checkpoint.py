"""A checkpoint is data: nothing read from one is unpickled, every size is bounded by its files.

ft's resume state (ft_state/) is a JSON index over raw tensor bytes and JSON values
(trainer/dcp_data.py), RNG states and the trainer's state in JSON. Each way a user opens a
checkpoint is tried with payloads that would run code (a canary file) or allocate without
bound: the trainer resuming (`python -m trainer`, what `ft resubmit` runs) and the
after-training commands on the login node. tests/trainer/fuzz_checkpoint.py mutates every file.
"""

from __future__ import annotations

import json
import os
import pathlib
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
from trainer.dcp_data import Refused, read_index

pytestmark = pytest.mark.train

FUZZ = REPO / "tests" / "trainer" / "fuzz_checkpoint.py"


class _Payload:
    """Pickles as a call of os.system: whoever unpickles it runs the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with one_thread():
        home = tmp_path_factory.mktemp("home")
        train_job(home, "lora", checkpoint={"every_steps": 1})
        yield home


@pytest.fixture(scope="module")
def resume(home):
    """`checkpointing.load` as the trainer calls it, on a model and optimizer built once (in-process:
    where a subprocess would only repeat what the end-to-end tests show)."""
    from ftcore.schema import load_job
    from trainer import checkpointing, dist, update
    from trainer.model import build
    from trainer.tokenizer import load_tokenizer

    folder = home / "jobs" / "lora"
    job = load_job(folder / layout.CONFIG)
    env = dist.detect({})
    base_dir, _ = checkpointing.base_reference(job, folder)
    with one_thread():
        built = build(job, env, torch.device("cpu"), load_tokenizer(job), base_dir=base_dir)
    optimizer = update.optimizer(job.optim, built.trainable)
    return lambda checkpoint: checkpointing.load(checkpoint, built, optimizer, env)


def _state(job, step=1):
    return layout.step_dir(job / layout.CHECKPOINTS, step) / layout.TRAINING_STATE


@pytest.fixture
def job(home, tmp_path):
    """A copy of the job whose only checkpoint (step 1) holds the distributed state only."""
    job = tmp_path / "jobs" / "lora"
    shutil.copytree(home / "jobs" / "lora", job)
    shutil.rmtree(layout.step_dir(job / layout.CHECKPOINTS, 2))
    (job / layout.CHECKPOINTS / layout.LATEST).write_text("step-000001\n")
    return job


def _index(job) -> dict:
    return json.loads((_state(job) / layout.DCP / layout.DCP_INDEX).read_text())


def _write_index(job, index: dict) -> None:
    (_state(job) / layout.DCP / layout.DCP_INDEX).write_text(json.dumps(index))


def _append(job, data: bytes, file: str = "__0_0.distcp") -> dict:
    """`data` appended to a data file; its span, for the index."""
    path = _state(job) / layout.DCP / file
    offset = path.stat().st_size
    with open(path, "ab") as f:
        f.write(data)
    return {"file": file, "offset": offset, "length": len(data)}


def _resume(job):
    return subprocess.run([sys.executable, "-m", "trainer", "--config", str(job / layout.CONFIG)], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=600)


def _refused(code, err, marker, what):
    assert code == exits.USER_ERROR, err
    assert what in err and "Traceback" not in err, err
    assert not marker.exists()


def test_the_resume_state_holds_no_pickle(home):
    """Every file under ft_state is JSON or a data file of raw tensors and JSON values."""
    state = _state(home / "jobs" / "lora")
    names = sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file())
    assert names == ["COMPLETE", "dcp/__0_0.distcp", "dcp/index.json", "rng-rank00000.json", "trainer_state.json"]
    for name in ("dcp/index.json", "rng-rank00000.json", "trainer_state.json"):
        json.loads((state / name).read_text())
    data = (state / "dcp" / "__0_0.distcp").read_bytes()
    assert b"\x80\x02" not in data[:2] and b"PK\x03\x04" not in data  # no pickle, no torch.save archive
    index = read_index(state / "dcp")
    values = [span for key, span in ((k.fqn, s) for k, s in index.spans.items())
              if key in index.metadata.state_dict_metadata and not hasattr(index.metadata.state_dict_metadata[key], "chunks")]
    assert any(k.startswith("optim.param_groups.0.") for k in index.metadata.state_dict_metadata)
    for span in values:  # the optimizer's param_groups: JSON
        json.loads(data[span.offset:span.offset + span.length])


def test_a_pickle_in_a_value_of_the_data_file_is_refused_on_resume(job, tmp_path):
    """The optimizer's lr (a value, not a tensor) replaced by a pickle that runs a command."""
    marker = tmp_path / "payload-ran"
    index = _index(job)
    entry = next(e for e in index["entries"] if e["key"].endswith("param_groups.0.lr"))
    entry["bytes"] = _append(job, pickle.dumps(_Payload(marker)))
    _write_index(job, index)
    result = _resume(job)
    _refused(result.returncode, result.stderr, marker, "lr is not JSON ft writes")
    assert "ft trainer: checkpoint" in result.stderr and "cannot be used" in result.stderr
    assert layout.newest_complete(job).name == "step-000001"  # nothing trained, nothing written


def test_a_value_of_another_type_is_refused(job, resume):
    index = _index(job)
    entry = next(e for e in index["entries"] if e["key"].endswith("param_groups.0.betas"))
    entry["bytes"] = _append(job, b'"0.9"')
    _write_index(job, index)
    with pytest.raises(UserError, match="betas is a str where this job has a tuple"):
        resume(layout.step_dir(job / layout.CHECKPOINTS, 1))


@pytest.mark.parametrize("command", [["export", "--to", "vllm"], ["merge"], ["eval", "--limit", "1"],
                                     ["generate", "Hello"], ["push", "me/tiny", "--dry-run"]], ids=lambda c: c[0])
def test_a_model_weight_indexed_as_a_value_is_refused_on_the_login_node(job, tmp_path, monkeypatch, command):
    """An index that makes a weight a value: torch's planner would torch.load its bytes."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    marker = tmp_path / "payload-ran"
    index = _index(job)
    entry = next(e for e in index["entries"] if e["key"].startswith("model."))
    for field in ("dtype", "size", "chunks"):
        del entry[field]
    entry["bytes"] = _append(job, pickle.dumps(_Payload(marker)))
    _write_index(job, index)
    code, _, err = run_ft(command[0], str(job), *command[1:])
    _refused(code, err, marker, f"its entry {entry['key']} is not a weight of this job's model")
    assert layout.kind_of(layout.step_dir(job / layout.CHECKPOINTS, 1)) is None  # no model files made


def test_an_older_pickled_index_is_refused_unread(job, tmp_path):
    """An older ft's checkpoint (torch's pickled .metadata): not read at all, even by a restricted
    unpickler. This one rebinds pathlib.PosixPath.exists by BUILD, the way round two's allowed
    classes let it, and runs a command."""
    marker = tmp_path / "payload-ran"
    dcp_dir = _state(job) / layout.DCP
    (dcp_dir / layout.DCP_INDEX).unlink()
    build = (b"\x80\x02cpathlib\nPosixPath\n}X\x06\x00\x00\x00existscollections\nOrderedDict\n)Rsb"
             + pickle.dumps(_Payload(marker), protocol=2)[2:])
    (dcp_dir / layout.LEGACY_DCP_INDEX).write_bytes(build)
    exists = pathlib.PosixPath.exists
    code, _, err = run_ft("export", str(job), "--to", "vllm")
    _refused(code, err, marker, "was written by an older ft: its resume state is pickled")
    assert pathlib.PosixPath.exists is exists
    result = _resume(job)
    _refused(result.returncode, result.stderr, marker, "was written by an older ft")
    assert "hint:" in result.stderr


@pytest.mark.parametrize("change, message", [
    (lambda e, span: span.update(file="/dev/zero", length=16 << 30), "names a data file ft does not write"),
    (lambda e, span: span.update(file="../../../../dev/zero"), "names a data file ft does not write"),
    (lambda e, span: span.update(length=16 << 30), "lies past the end of __0_0.distcp"),
    (lambda e, span: span.update(offset=2**70), "has no byte range"),
    (lambda e, span: e.update(size=[2**31, 2**31]), "chunks hold"),
    (lambda e, span: span.update(sizes=[2**40, 1]), "chunk outside the tensor"),
    (lambda e, span: e.update(chunks="x"), "neither a tensor ft writes nor a value"),
    (lambda e, span: e.update(size="abc"), "size is not a list"),
    (lambda e, span: e.update(dtype="object"), "neither a tensor ft writes nor a value"),
    (lambda e, span: e.clear(), "without a key of its own"),
], ids=["dev-zero-16GiB", "dotdot", "16GiB", "offset-2^70", "claimed-2^62-values", "chunk-outside", "chunks-str",
        "size-str", "dtype-object", "entry-empty"])
def test_an_index_that_lies_is_refused_before_anything_is_allocated(job, change, message):
    index = _index(job)
    entry = next(e for e in index["entries"] if "chunks" in e and e["size"])
    change(entry, entry["chunks"][0])
    _write_index(job, index)
    with pytest.raises(Refused, match=message):
        read_index(_state(job) / layout.DCP)


@pytest.mark.parametrize("field, value", [("length", 16 << 30), ("offset", 16 << 30), ("file", "/dev/zero")])
def test_a_value_whose_span_lies_is_refused(job, field, value):
    index = _index(job)
    entry = next(e for e in index["entries"] if "bytes" in e)
    entry["bytes"][field] = value
    _write_index(job, index)
    with pytest.raises(Refused, match="lies past the end|names a data file ft does not write"):
        read_index(_state(job) / layout.DCP)


def test_a_hostile_key_reaches_the_terminal_as_one_plain_line(job, tmp_path):
    index = _index(job)
    entry = next(e for e in index["entries"] if "chunks" in e)
    entry["key"] = "model.\x1b]52;c;cHduZWQ=\x07\x1b[2J\nforged line"
    entry["chunks"][0]["length"] += 1
    _write_index(job, index)
    code, _, err = run_ft("export", str(job), "--to", "vllm")
    _refused(code, err, tmp_path / "none", "cannot be used")
    assert "\x1b" not in err and "\x07" not in err and "\nforged line" not in err


def test_spans_that_share_bytes_are_refused(job):
    """Overlapping spans could claim more than the files hold."""
    index = _index(job)
    tensors = [e for e in index["entries"] if "chunks" in e and e["size"]]
    first, second = tensors[0]["chunks"][0], tensors[1]["chunks"][0]
    second.update(offset=first["offset"])
    _write_index(job, index)
    with pytest.raises(Refused, match="places two items on the same bytes"):
        read_index(_state(job) / layout.DCP)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_data_file_or_index_that_is_not_a_regular_file_is_refused(job, target):
    dcp_dir = _state(job) / layout.DCP
    for name in ("__0_0.distcp", layout.DCP_INDEX):
        saved = (dcp_dir / name).read_bytes()
        (dcp_dir / name).unlink()
        if target == "fifo":
            os.mkfifo(dcp_dir / name)
        else:
            (dcp_dir / name).symlink_to(target)
        with pytest.raises(Refused):
            read_index(dcp_dir)
        (dcp_dir / name).unlink()
        (dcp_dir / name).write_bytes(saved)


@pytest.fixture
def no_hang():
    """Fail a test that waits for more than 30 s instead of hanging the run."""
    import signal

    def waited(signum, frame):
        raise TimeoutError("waited 30 s on a file")

    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _never_ending(path, target):
    path.unlink()
    if target == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(target)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_checkpoint_file_that_never_ends_is_damage_not_a_hang(home, tmp_path, no_hang, target):
    """What every command reads of a checkpoint (its step, its adapter's config and header)."""
    job = tmp_path / "lora"
    shutil.copytree(home / "jobs" / "lora", job)
    final = layout.step_dir(job / layout.CHECKPOINTS, 2)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        _never_ending(final / name, target)
    assert "not a regular file" in layout.safetensors_damage(final / "adapter_model.safetensors")
    with pytest.raises(UserError, match="cannot read .*adapter_config.json: not a regular file"):
        layout.Checkpoint(final, layout.LORA, job).adapter_config
    _never_ending(_state(job, 1) / layout.TRAINER_STATE, target)
    assert layout.damage(layout.step_dir(job / layout.CHECKPOINTS, 1)) == f"{layout.TRAINER_STATE} cannot be read (OSError)"
    assert layout.newest_complete(job) is None  # each is damaged, none hangs


def test_a_dev_zero_index_ends_in_one_line_on_resume_and_export(job, tmp_path):
    dcp_dir = _state(job) / layout.DCP
    (dcp_dir / "__0_0.distcp").unlink()
    (dcp_dir / "__0_0.distcp").symlink_to("/dev/zero")
    result = _resume(job)
    _refused(result.returncode, result.stderr, tmp_path / "none", "__0_0.distcp is not a regular file")
    code, _, err = run_ft("export", str(job), "--to", "vllm")
    _refused(code, err, tmp_path / "none", "__0_0.distcp is not a regular file")


@pytest.mark.parametrize("name, text", [("rng-rank00000.json", '{"python": [3, "x", null], "torch": "!!"}'),
                                        ("rng-rank00000.json", "\x80\x02cos\nsystem\n."),
                                        ("trainer_state.json", '{"step": 1, "seed": "0"}')])
def test_a_bad_rng_or_trainer_state_is_refused(job, resume, name, text):
    (_state(job) / name).write_text(text)
    with pytest.raises(UserError, match="cannot be used"):
        resume(layout.step_dir(job / layout.CHECKPOINTS, 1))


def test_a_checkpoint_read_through_torchs_own_planner_is_refused(home):
    """ft's reader gives values only to ft's planner: torch's default one would unpickle them."""
    import torch.distributed.checkpoint as dcp

    reader_dir = _state(home / "jobs" / "lora") / layout.DCP
    from trainer.dcp_data import DataReader

    state = {"optim": {"param_groups": [{"lr": 0.0}]}}
    with pytest.raises((TypeError, dcp.CheckpointException)):
        dcp.load(state, storage_reader=DataReader(reader_dir), no_dist=True,
                 planner=dcp.DefaultLoadPlanner(allow_partial_load=True))


def test_fuzzing_every_file_never_runs_code_nor_allocates_past_the_files(home, tmp_path):
    """Seeded mutations of each file of a real checkpoint, loaded in one process as resume and export
    load them (memory capped: a claim the bounds missed fails to allocate and is reported)."""
    marker = tmp_path / "payload-ran"
    result = subprocess.run([sys.executable, str(FUZZ), str(home / "jobs" / "lora"), str(tmp_path / "work"),
                             str(marker), "--seed", "29", "--rounds", "150"],
                            cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert not marker.exists()
    assert summary["refused"] > 100 and summary["surprises"] == [], summary
    assert summary["kinds"] >= 8, summary


def test_an_older_checkpoint_you_trust_converts_once_and_resumes(tmp_path, monkeypatch, resume):
    """The way out for an older ft's checkpoint: `python -m trainer.convert_older` reads it with
    torch's own (pickling) reader, on the user's word, and the job then resumes from it."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    from trainer import checkpointing, dcp_data

    monkeypatch.setattr(dcp_data, "DataWriter", lambda path: FileSystemWriter(str(path)))  # what older ft wrote
    monkeypatch.setattr(dcp_data, "DataSavePlanner", DefaultSavePlanner)
    with one_thread():
        job = train_job(tmp_path, "older", checkpoint={"every_steps": 1})
    monkeypatch.undo()
    shutil.rmtree(layout.step_dir(job / layout.CHECKPOINTS, 2))
    (job / layout.CHECKPOINTS / layout.LATEST).write_text("step-000001\n")
    checkpoint = layout.step_dir(job / layout.CHECKPOINTS, 1)
    state = checkpoint / layout.TRAINING_STATE
    rng = json.loads((state / "rng-rank00000.json").read_text())
    version, words, gauss = rng["python"]
    torch.save({"python": (version, tuple(words), gauss), "torch": torch.get_rng_state()}, state / "rng-rank00000.pt")
    (state / "rng-rank00000.json").unlink()
    assert (state / layout.DCP / layout.LEGACY_DCP_INDEX).is_file()  # torch's pickled index

    with pytest.raises(UserError) as refused:
        checkpointing.state_reader(checkpoint)
    assert f"python -m trainer.convert_older {checkpoint}" in refused.value.hint

    from trainer import convert_older

    assert convert_older.main([str(checkpoint)]) == 0
    assert not (state / layout.DCP / layout.LEGACY_DCP_INDEX).exists() and (state / "dcp.older" / ".metadata").exists()
    assert resume(checkpoint)["step"] == 1  # (the same model and optimizer as this job's)
    assert convert_older.main([str(checkpoint)]) == exits.USER_ERROR  # once
