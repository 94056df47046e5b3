"""Checkpoints: exact training state for resuming, and at the end a loadable model for people.

    JOB/checkpoints/step-000012/
        ft_state/dcp/                 trainable weights + optimizer (torch.distributed.checkpoint, sharded;
                                      raw tensors and a JSON index: trainer/dcp_data.py)
        ft_state/rng-rank00000.json   python and torch RNG states, one file per rank
        ft_state/trainer_state.json   step, data position, schedule
        ft_state/COMPLETE             written last: only folders with it count
        tokenizer files
      and in the final checkpoint only (gathering a full copy on rank 0 stalls every rank), or in
      every one with checkpoint.hf_every_save:
        adapter_model.safetensors, adapter_config.json   LoRA: PeftModel.from_pretrained(base, here)
        model.safetensors, config.json                   SFT: AutoModelForCausalLM.from_pretrained(here)
    JOB/checkpoints/latest            names the newest complete folder (replaced atomically)

Everything under ft_state is data (JSON and raw tensor bytes): nothing read back from a
checkpoint is unpickled, so a checkpoint from elsewhere cannot run code (README, "What ft trusts").

ft's after-training commands accept any checkpoint: for one without the Hugging Face files,
`write_hf_from_state` makes them from ``ft_state/dcp`` on the CPU (fttools.hf_files).

A checkpoint is written into ``.tmp-step-000012`` and renamed into place once complete, so a
job killed mid-save leaves the previous checkpoint as the newest complete one
(``ftcore.layout.newest_complete``, which owns these names).
"""

from __future__ import annotations

import dataclasses
import json
import base64
import os
import random
import shutil
from pathlib import Path

import torch

from ftcore import contract, policy
from ftcore.errors import UserError
from ftcore.layout import (BASE_MODEL, CHECKPOINTS, COMPLETE_MARKER, DCP, LATEST, TRAINER_STATE, TRAINING_STATE,
                           complete_checkpoints, is_complete, newest_complete, step_dir)

from . import dist


def base_reference(job, job_dir: Path) -> tuple[Path | None, str | None]:
    """(folder to save a random base into, what adapter_config.json names as the base)."""
    if job.peft is None:
        return None, None
    if job.model.init == "random":
        base_dir = (job_dir / BASE_MODEL).resolve()
        return base_dir, str(base_dir)
    local = Path(job.model.path)
    return None, str(local.resolve()) if local.exists() else job.model.path


def _state_dicts(built, optimizer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # Trainable weights only: the frozen base of a LoRA job comes from model.path again.
    options = StateDictOptions(ignore_frozen_params=True)
    model_sd, optim_sd = get_state_dict(built.module, optimizer, options=options)
    return model_sd, optim_sd, options


def _full_state_dict(built) -> dict[str, torch.Tensor]:
    """LoRA's unsharded adapters on rank 0's CPU (a collective: every rank calls it).

    The adapters only: the frozen base of a 405B job would not fit in memory.
    """
    if not built.sharded:
        return built.module.lm.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    full = get_model_state_dict(built.module, options=options)
    return {name.removeprefix("lm."): tensor for name, tensor in full.items()}


# What wrappers add to a parameter's name (activation checkpointing, torch.compile, FSDP1):
# the exported names are the model's own, as get_model_state_dict gives them.
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def full_weights_in(built, dtype: torch.dtype, is_main: bool) -> dict[str, torch.Tensor]:
    """Full SFT's weights in `dtype`, whole, on rank 0's CPU (empty elsewhere): streamed one
    tensor at a time (a collective: every rank calls it, in the same order).

    Each sharded tensor is all-gathered alone and cast as it arrives, so the host holds the
    output and at most one gathered tensor besides it, never the fp32 state whole next to its
    cast copy (48 GB for an 8B model). The values are those of gathering everything and then
    casting: the same cast of the same numbers.
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in built.module.state_dict().items():
        for prefix in _WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()  # this tensor's shards from every rank
        if is_main:
            out[name.removeprefix("lm.")] = tensor.to(device="cpu", dtype=dtype)
        del tensor  # the gathered fp32 copy goes before the next one is made
    return out


def _export(lm, folder: Path, base_ref: str | None, full: dict[str, torch.Tensor] | None, dtype: torch.dtype) -> None:
    """Rank 0: the folder a person loads with transformers or peft, unchanged.

    `lm`: the Hugging Face model (a PeftModel for LoRA); `full`: its unsharded weights under
    its own names, in `dtype` for full SFT (None: `lm`'s own).
    """
    if hasattr(lm, "peft_config"):
        for config in lm.peft_config.values():
            config.base_model_name_or_path = base_ref
        # Embeddings never change size here: targeting lm_head must not copy the whole head.
        lm.save_pretrained(folder, state_dict=full, save_embedding_layers=False)
        return
    saved_dtype = contract.config_dtype(lm.config)
    contract.set_config_dtype(lm.config, dtype)  # config.json says what the file holds
    try:
        lm.save_pretrained(folder, state_dict=full)
    finally:
        contract.set_config_dtype(lm.config, saved_dtype)


def save(run_dir: Path, step: int, built, optimizer, tokenizer, trainer_state: dict, env: dist.DistEnv,
         keep_last: int | None, base_ref: str | None, export: bool = False) -> Path:
    """Write checkpoint `step` of the run in `run_dir` (all ranks call this) and point `latest` at it.

    `export`: also the Hugging Face model files (the final checkpoint).
    """
    root = run_dir / CHECKPOINTS
    final = step_dir(root, step)
    if is_complete(final):
        return final  # e.g. resumed at the very end: nothing new to write
    tmp = root / f".tmp-{final.name}"
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / TRAINING_STATE).mkdir(parents=True)
    dist.barrier()
    try:
        if export:
            _write_hf_model(tmp, built, env, base_ref)
        _write_state(tmp, built, optimizer, tokenizer, trainer_state, env)
    except BaseException as err:  # dcp wraps a writer's OSError in a CheckpointException (a BaseException)
        os_error = _os_error(err)
        if os_error is None:
            raise
        # A full disk (or quota, or a lost mount): the partial checkpoint goes, the complete
        # ones stay, and the next run resumes from the newest of them.
        shutil.rmtree(tmp, ignore_errors=True)
        previous = newest_complete(run_dir)
        resume = f"a resubmit resumes from {previous.name}" if previous else "no complete checkpoint exists yet"
        raise UserError(f"checkpoint step {step} could not be written to {root}: {os_error.strerror or os_error}; "
                        f"the partial checkpoint was removed and {resume}",
                        hint="free space (or raise the quota), then resubmit the job") from None
    if env.is_main:
        _publish(tmp, final, step, keep_last)
    dist.barrier()
    return final


def _write_hf_model(tmp: Path, built, env: dist.DistEnv, base_ref: str | None) -> None:
    """The Hugging Face model files (LoRA: the adapter; SFT: the whole model), from rank 0."""
    lora = hasattr(built.lm, "peft_config")
    if lora:
        full = _full_state_dict(built) if (built.sharded or env.is_main) else {}
    else:
        full = full_weights_in(built, built.compute_dtype, env.is_main)
    if env.is_main:
        lm = built.lm if lora else built.module.causal_lm
        _export(lm, tmp, base_ref, full if (built.sharded or not lora) else None, built.compute_dtype)
    del full


def _write_state(tmp: Path, built, optimizer, tokenizer, trainer_state: dict, env: dist.DistEnv) -> None:
    """What a resume needs: the tokenizer, the sharded weights and optimizer, each rank's RNG
    streams and the trainer's state, flushed to disk."""
    import torch.distributed.checkpoint as dcp

    from .dcp_data import DataSavePlanner, DataWriter

    if env.is_main:
        tokenizer.save_pretrained(tmp)  # every checkpoint: what its token ids mean
    model_sd, optim_sd, _ = _state_dicts(built, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=DataWriter(tmp / TRAINING_STATE / DCP),
             planner=DataSavePlanner())
    (tmp / TRAINING_STATE / _rng_file(env.rank)).write_text(json.dumps(_rng_state()))
    dist.barrier()
    if env.is_main:
        (tmp / TRAINING_STATE / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        _fsync_tree(tmp)


def _publish(tmp: Path, final: Path, step: int, keep_last: int | None) -> None:
    """Mark the written checkpoint complete, rename it into place, point `latest` at it, prune."""
    root = final.parent
    (tmp / TRAINING_STATE / COMPLETE_MARKER).write_text(f"step {step}\n")
    if final.exists():  # an incomplete leftover with this name
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer = root / f"{LATEST}.tmp"  # for people and shells; ft itself reads the markers
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / LATEST)
    prune(root, keep_last)


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err` (torch.distributed.checkpoint wraps what the writer raised)."""
    return _inner(err, OSError)


def _inner(err: BaseException, kind: type):
    """The first exception of `kind` in `err`, its causes, and what DCP gathered from each rank."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        failures = getattr(err, "failures", None)  # CheckpointException: rank → (exception, traceback)
        for inner in failures.values() if isinstance(failures, dict) else ():
            inner = inner[0] if isinstance(inner, tuple) and inner else inner
            found = _inner(inner, kind) if isinstance(inner, BaseException) else None
            if found:
                return found
        if isinstance(err, kind):
            return err
        err = err.__cause__ or err.__context__
    return None


def prune(root: Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    for _, folder in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)


def load(folder: Path, built, optimizer, env: dist.DistEnv) -> dict:
    """Restore trainable weights, optimizer and this rank's RNG; return the trainer state.

    Anything wrong in the checkpoint ends in one UserError that names it (exit 2)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from .dcp_data import DataLoadPlanner

    reader = state_reader(folder)
    model_sd, optim_sd, options = _state_dicts(built, optimizer)
    try:
        trainer_state = _trainer_state(folder)
        # dcp.load fails on any key the checkpoint lacks; strict=False only lets the frozen
        # base (deliberately not saved) stay as loaded from model.path.
        dcp.load({"model": model_sd, "optim": optim_sd}, storage_reader=reader, planner=DataLoadPlanner())
        options = dataclasses.replace(options, strict=False)
        set_state_dict(built.module, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=options)
        rng_file = folder / TRAINING_STATE / _rng_file(env.rank)
        if rng_file.exists() or rng_file.is_symlink():
            _set_rng_state(json.loads(_read_small(rng_file)))
        else:  # resumed with more ranks than before: new ranks start fresh streams
            torch.manual_seed(trainer_state["seed"] + env.rank)
    except (Exception, dcp.CheckpointException) as err:  # (a CheckpointException is a BaseException)
        raise _unusable(folder, err) from None
    return trainer_state


_COUNTS = ("step", "num_train_rows", "global_batch_size", "seed")


def _trainer_state(folder: Path) -> dict:
    from .dcp_data import Refused

    state = json.loads(_read_small(folder / TRAINING_STATE / TRAINER_STATE))
    if not isinstance(state, dict) or not all(type(state.get(k)) is int and 0 <= state[k] < 2**62 for k in _COUNTS):
        raise Refused(f"its {TRAINER_STATE} does not record {', '.join(_COUNTS)} as counts")
    return state


def _read_small(path: Path) -> bytes:
    """A JSON record of the checkpoint: a regular file of at most 16 MiB."""
    from .dcp_data import read_regular

    return read_regular(path, limit=16 << 20)


def _rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.json"


# --- reading a checkpoint as data -----------------------------------------------------------------

_TRUST_HINT = "resume from another checkpoint of the job (move this one out of checkpoints/), or from a copy you trust"


def state_reader(checkpoint: Path):
    """A DCP reader of `checkpoint`'s ft_state/dcp whose index is read and checked now, before
    torch's collectives would wrap the error: every rank stops with the same clear message."""
    from .dcp_data import DataReader, Refused

    try:
        return DataReader(checkpoint / TRAINING_STATE / DCP)
    except Refused as err:
        raise _unusable(checkpoint, err) from None


def _unusable(checkpoint: Path, err: BaseException) -> UserError:
    """The one-line error for a checkpoint that cannot be used, from what went wrong reading it."""
    from .dcp_data import Older

    inner = _inner(err, UserError) or _inner(err, Exception) or err
    if isinstance(inner, Older):
        return UserError(f"checkpoint {checkpoint} was written by an older ft: {inner.problems[0]}",
                         hint=f"if you wrote it yourself, convert it once with `python -m trainer.convert_older "
                              f"{checkpoint}` (that reads the old files with torch's pickling reader); or start the "
                              "job again in a new folder")
    reason = inner.problems[0] if isinstance(inner, UserError) else f"{type(inner).__name__}: {inner}"
    # One line, and nothing from the files that a terminal would act on (escapes, control characters).
    reason = "".join(c if c.isprintable() else "?" for c in " ".join(str(reason).split()))[:300]
    return UserError(f"checkpoint {checkpoint} cannot be used: {reason}", hint=_TRUST_HINT)


def _rng_state() -> dict:
    """This rank's RNG states as JSON: Python's as numbers, torch's bytes in base64."""
    def encode(state: torch.Tensor) -> str:
        return base64.b64encode(state.numpy().tobytes()).decode()

    version, words, gauss = random.getstate()
    state = {"python": [version, list(words), gauss], "torch": encode(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [encode(s) for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    def decode(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)

    version, words, gauss = state["python"]
    if not (isinstance(words, list) and all(type(w) is int for w in words)):
        raise ValueError("its Python RNG state is not a list of numbers")
    random.setstate((version, tuple(words), gauss))
    torch.set_rng_state(decode(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode(s) for s in state["cuda"]])


def _fsync_tree(path: Path) -> None:
    """Make everything written so far durable before the marker says it is there."""
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())


# --- Hugging Face files from the distributed state (for ft's after-training commands) -----------


def write_hf_from_state(checkpoint: Path, job, base_ref: str | None, folder: Path) -> None:
    """The Hugging Face files `save(export=True)` would have written, into `folder`, made on
    the CPU from `checkpoint`'s distributed state: only the model's entries are read, no
    optimizer state, and a full SFT model is assembled on the meta device first (no init)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from transformers import AutoModelForCausalLM

    from .dcp_data import DataLoadPlanner, Refused
    from .lora import add_lora
    from .model import DTYPES, model_config

    config = model_config(job)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, **contract.with_dtype(torch.float32))
    if job.peft is not None:
        lm = add_lora(lm, job)
    shapes = {name: tuple(tensor.shape) for name, tensor in lm.state_dict().items()}

    reader = state_reader(checkpoint)
    entries = {k: v for k, v in reader.read_metadata().state_dict_metadata.items() if k.startswith("model.")}
    for key, entry in entries.items():  # (the index's sizes are bounded by its files; this model's are not theirs)
        name = key.removeprefix("model.").removeprefix("lm.")
        if not isinstance(entry, TensorStorageMetadata) or shapes.get(name) != tuple(entry.size):
            raise _unusable(checkpoint, Refused(f"its entry {key} is not a weight of this job's model"))
    state = {k.removeprefix("model."): torch.empty(v.size, dtype=v.properties.dtype) for k, v in entries.items()}
    try:
        dcp.load({"model": state}, storage_reader=reader, planner=DataLoadPlanner(), no_dist=True)
    except (Exception, dcp.CheckpointException) as err:
        raise _unusable(checkpoint, err) from None
    weights = {k.removeprefix("lm."): v for k, v in state.items()}

    if job.peft is not None:
        _export(lm, folder, base_ref, weights, torch.float32)
        return
    lm.load_state_dict(weights, strict=False, assign=True)
    lm.tie_weights()
    missing = [k for k, v in lm.state_dict().items() if v.is_meta]
    if missing:
        raise _unusable(checkpoint, Refused(f"it has no weights for {missing[:3]} ({len(missing)} in all)"))
    dtype = DTYPES[policy.decide(job).compute]
    _export(lm, folder, base_ref, {k: v.to(dtype) for k, v in lm.state_dict().items()}, dtype)
