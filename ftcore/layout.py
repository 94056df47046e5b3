"""The job folder and checkpoint layout: every name ft writes, and how to read them back.

    JOB/                          one per submission (`ft submit`) or allocation (`ft train`)
        config.yaml               the resolved job; the trainer validates it again
        job.sbatch command.txt    the script and the command line that made it
        submission.json           ft's record: executor, job id, history of submissions
        events.jsonl              start / signal / requeue / exit, written by the script (ft train: rank 0)
        metrics.jsonl             one line per logged step, written by rank 0
        logs/                     scheduler output, or per-rank rank-N.out (local, ft train)
        tasks/<i>/                a sweep's array task: a run folder of its own
        checkpoints/step-000012/  ft_state/ (the resume state); the final one also a loadable model
        checkpoints/latest        names the newest complete checkpoint (for people and shells)
        cache/tokens-<key>.pt     the tokenized data, written once by rank 0, reused on resubmits
        eval/<time>-lm-eval.json  lm-evaluation-harness results (`ft eval --tasks`), lm-eval's JSON unchanged

A checkpoint counts once its ``ft_state/COMPLETE`` marker exists: the trainer writes it last,
into a folder that is renamed into place. ``newest_complete`` is the one definition of "the
checkpoint to resume from / to load", used by the trainer and by every launcher command.
A marked checkpoint whose files were damaged afterwards (a truncated weights file, a
trainer_state.json that is not the step's) does not count either: the previous one is used.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcore.errors import UserError
from ftcore.files import read_plain

CONFIG = "config.yaml"
SCRIPT = "job.sbatch"
COMMAND = "command.txt"
RECORD = "submission.json"
EVENTS = "events.jsonl"
METRICS = "metrics.jsonl"
LOGS = "logs"
TASKS = "tasks"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
EXPORTS = "exports"
EVAL = "eval"  # lm-evaluation-harness results (ftcore.evaltasks names the files)
TOKEN_CACHE = "cache"
# Randomly initialised base weights of a LoRA job: an adapter is useless without its base.
BASE_MODEL = "base_model"
# The trainer's resume state inside a checkpoint: optimizer moments and RNG streams.
TRAINING_STATE = "ft_state"
COMPLETE_MARKER = "COMPLETE"

LORA = "lora"
FULL = "full"
# Hugging Face's names in a model folder, as ft reads and writes them.
WEIGHTS = "model.safetensors"
WEIGHT_INDEX = "model.safetensors.index.json"  # the shards of a large model
WEIGHT_FILES = (WEIGHTS, WEIGHT_INDEX, "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
SUPERVISOR_LOG = "supervisor.err"  # under LOGS: a detached local run's supervisor
RANK_LOGS = "rank-*.out"  # under LOGS: what rank_log names


def rank_log(rank: int) -> str:
    """The log file (under LOGS) of one training process of a local or `ft train` run."""
    return f"rank-{rank}.out"


# --- checkpoints of one run ----------------------------------------------------------------------


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


TRAINER_STATE = "trainer_state.json"
DCP = "dcp"
DCP_INDEX = "index.json"  # under DCP: the resume state's index, JSON (trainer/dcp_data.py)
LEGACY_DCP_INDEX = ".metadata"  # under DCP: an older ft's pickled index, never read


def read_regular(path: Path, limit: int, follow_links: bool = True) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (OSError past it, or for a
    FIFO, a device or a folder). A checkpoint or model folder is read through this, whoever made it."""
    data = read_plain(path, limit=limit + 1, follow=follow_links)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def is_complete(checkpoint: Path) -> bool:
    """Marked complete by the trainer (the marker is written last)."""
    return (checkpoint / TRAINING_STATE / COMPLETE_MARKER).is_file()


def damage(checkpoint: Path, step: int | None = None) -> str | None:
    """Why a marked checkpoint cannot be used, or None. Reads only headers and small files,
    so every command can afford it: trainer_state.json names the step, the resume state's
    index exists, each safetensors file is as long as its header says."""
    state_dir = checkpoint / TRAINING_STATE
    try:
        state = json.loads(read_regular(state_dir / TRAINER_STATE, 1 << 20))
    except (OSError, ValueError, RecursionError) as err:
        return f"{TRAINER_STATE} cannot be read ({type(err).__name__})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{TRAINER_STATE} does not record a step"
    if step is not None and state["step"] != step:
        return f"{TRAINER_STATE} records step {state['step']}, not {step}"
    if (state_dir / DCP).exists() and not any((state_dir / DCP / name).is_file() for name in (DCP_INDEX, LEGACY_DCP_INDEX)):
        return f"the resume state has no index ({DCP}/{DCP_INDEX})"
    if kind_of(checkpoint) is None and not (state_dir / DCP).exists():
        # (Only a run's final checkpoint holds model files; the others, the resume state.)
        return "it holds neither model files nor the resume state"
    for weights in checkpoint.glob("*.safetensors"):
        problem = safetensors_damage(weights)
        if problem:
            return f"{weights.name}: {problem}"
    return None


def safetensors_damage(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return "not a regular file"
            head = handle.read(8)
            if len(head) < 8:
                return "shorter than its header"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8 or length > 100 * 2**20:
                return "header length past the end of the file"
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as err:
        return f"unreadable header ({type(err).__name__})"
    if not isinstance(header, dict):
        return "unreadable header"
    ends = [entry.get("data_offsets", [0, 0])[1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict)]
    if not all(isinstance(end, int) for end in ends) or 8 + length + max(ends, default=0) > size:
        return "truncated: its tensors end past the end of the file"
    return None



def weights_damage(folder: Path, present: set[str] | None = None) -> list[str]:
    """What is wrong with a model folder's safetensors weights, read from headers only: an
    index that is not the JSON Hugging Face writes, a shard it names that is missing (or
    outside the folder), a shard whose header is garbage or promises more than the file holds.
    `present`: the file names known to be there (a hub snapshot's listing), else the folder's."""
    index = folder / WEIGHT_INDEX
    try:
        if index.stat().st_size > 64 * 2**20:
            return [f"{WEIGHT_INDEX} is larger than any index Hugging Face writes"]
        mapping = json.loads(read_regular(index, 64 * 2**20)).get("weight_map")
    except FileNotFoundError:
        single = folder / WEIGHTS
        problem = safetensors_damage(single) if single.is_file() else None
        return [f"{WEIGHTS}: {problem}"] if problem else []
    except (OSError, ValueError, AttributeError) as err:  # (AttributeError: a JSON list, not an object)
        return [f"{WEIGHT_INDEX} is not a safetensors index ({type(err).__name__})"]
    if not isinstance(mapping, dict) or not mapping or not all(isinstance(v, str) for v in mapping.values()):
        return [f"{WEIGHT_INDEX} has no weight_map of tensor names to shard files"]
    problems = []
    for shard in sorted(set(mapping.values())):
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            problems.append(f"{WEIGHT_INDEX} names a shard outside the folder ({shard[:80]!r})")
        elif not ((shard in present) if present is not None else (folder / shard).is_file()):
            problems.append(f"no weight shard {shard}")
        elif (folder / shard).is_file():
            damage = safetensors_damage(folder / shard)
            if damage:
                problems.append(f"{shard}: {damage}")
    return problems


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete and undamaged checkpoint under `root`, oldest first."""
    try:
        children = list(root.iterdir())
    except OSError:
        return []
    found = []
    for child in children:
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and is_complete(child) and damage(child, int(match.group(1))) is None:
            found.append((int(match.group(1)), child))
    return sorted(found)


def newest_complete(run_dir: Path) -> Path | None:
    """The run's newest complete checkpoint. Half-written ones (no marker, `.tmp-*`) never count."""
    found = complete_checkpoints(run_dir / CHECKPOINTS)
    return found[-1][1] if found else None


def kind_of(folder: Path) -> str | None:
    """LORA, FULL, or None when the folder holds no loadable model."""
    if (folder / ADAPTER_CONFIG).is_file():
        return LORA
    if (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES):
        return FULL
    return None


def model_files(folder: Path) -> list[Path]:
    """Every file of the loadable model in `folder`, without the trainer's resume state."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and TRAINING_STATE not in p.relative_to(folder).parts[:1]
    )


def owning_run(checkpoint: Path) -> Path | None:
    """`<run>/checkpoints/step-N` → `<run>` when that is a job (or sweep task) folder."""
    run = checkpoint.parent.parent
    if checkpoint.parent.name == CHECKPOINTS and (run / CONFIG).is_file():
        return run
    return None


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(read_regular(path, 64 * 2**20))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except (ValueError, RecursionError) as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} should hold a JSON object")
    return value


@dataclass(frozen=True)
class Checkpoint:
    """A loadable model folder: a LoRA adapter (loaded onto its base with peft) or a full model."""

    path: Path
    kind: str  # LORA or FULL
    run_dir: Path | None  # the job (or sweep task) folder that wrote it, when there is one

    @classmethod
    def at(cls, folder: Path) -> "Checkpoint | None":
        kind = kind_of(folder)
        if kind is None:
            return None
        path = folder.resolve()
        return cls(path, kind, owning_run(path))

    @property
    def is_lora(self) -> bool:
        return self.kind == LORA

    @property
    def adapter_config(self) -> dict[str, Any]:
        return read_json_object(self.path / ADAPTER_CONFIG) if self.is_lora else {}

    @property
    def base(self) -> str | None:
        """What a LoRA adapter is applied to: a local folder or a hub id."""
        base = self.adapter_config.get("base_model_name_or_path")
        if base is not None and not isinstance(base, str):
            raise UserError(f"{self.path / ADAPTER_CONFIG}: base_model_name_or_path should be a "
                            f"folder or hub id, not {base!r}")
        return base or None

    @property
    def job_config(self) -> dict[str, Any]:
        """The resolved job that trained this checkpoint ({} for a folder from elsewhere)."""
        import yaml

        if self.run_dir is None:
            return {}
        try:
            value = yaml.safe_load((self.run_dir / CONFIG).read_text())
        except (OSError, ValueError, yaml.YAMLError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def label(self) -> str:
        """A short name: `<job folder>-<step>` for a job's checkpoint, else the folder name."""
        if self.run_dir is not None and self.path.parent.name == CHECKPOINTS:
            run = self.run_dir
            job = run.name if run.parent.name != TASKS else f"{run.parent.parent.name}-task{run.name}"
            return f"{job}-{self.path.name}"
        return self.path.name

    def default_output(self, suffix: str) -> Path:
        """`<job>/exports/<step>-<suffix>` for a job's checkpoint, else `<folder>-<suffix>` beside it."""
        if self.run_dir is not None and self.path.parent.name == CHECKPOINTS:
            return self.run_dir / EXPORTS / f"{self.path.name}-{suffix}"
        return self.path.with_name(f"{self.path.name}-{suffix}")
