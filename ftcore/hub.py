"""What a job needs from the Hugging Face Hub, and which files of a hub repository ft uses.

Both halves read these rules: `ft stage` downloads exactly these files on the login node and
`ft submit` checks them on an offline site; the trainer reads the same files from the cache.
Pure functions over names and file lists: no network, no huggingface_hub import.
"""

from __future__ import annotations

import fnmatch
import re
from typing import NamedTuple

from ftcore.schema import Job, looks_local
from ftcore.shipped import PREFIX

# Files of a model repository the trainer loads: config, weights, tokenizer (every format
# transformers reads), chat template. Never the rest (original/*.pth, README, images).
MODEL_FILES = ("*.json", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja")
WEIGHTS = ("*.safetensors",)
MODEL_CODE = ("*.py",)  # model.trust_remote_code: the repository's own modelling code
LEGACY_WEIGHTS = ("pytorch_model*.bin",)  # only for a repository without .safetensors
# Files of a dataset repository the trainer reads as records.
DATA_FILES = ("*.jsonl", "*.json", "*.parquet")
# JSON files of a dataset repository that describe it rather than hold records.
METADATA = ("dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json")

# A split's other names in file names, as the hub's own data-file conventions use them.
SPLIT_WORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_DELIMITER = r"[-._ 0-9/]"


class Artefact(NamedTuple):
    """A hub repository a job names: `keys` are the settings that name it."""

    repo_id: str
    repo_type: str  # "model" or "dataset", as huggingface_hub spells it
    keys: tuple[str, ...]
    splits: tuple[str, ...] = ()  # datasets: the splits the job reads
    weights: bool = False  # models: the base model's config and weights
    tokenizer: bool = False  # models: the tokenizer's files
    code: bool = False  # models: trust_remote_code, so the repository's .py files too


def _is_hub_id(value: str | None) -> bool:
    """A hub repository name; not a path, a file ft ships, or a shell variable (`$MODEL_DIR`,
    expanded by the batch script `--print-srun` is pasted into: no hub id holds a `$`)."""
    return bool(value) and not looks_local(value) and not value.startswith(PREFIX) and "$" not in value


def artefacts(job: Job) -> list[Artefact]:
    """The hub model and datasets `job` loads (one entry per repository)."""
    found: dict[tuple[str, str], Artefact] = {}

    def add(repo_id: str, repo_type: str, key: str, **role) -> None:
        old = found.get((repo_type, repo_id), Artefact(repo_id, repo_type, (), code=job.model.trust_remote_code))
        split = role.pop("split", None)
        splits = old.splits + ((split,) if split and split not in old.splits else ())
        roles = {name: getattr(old, name) or value for name, value in role.items()}
        keys = old.keys + ((key,) if key not in old.keys else ())
        found[(repo_type, repo_id)] = old._replace(keys=keys, splits=splits, **roles)

    model = job.model
    if model.init == "pretrained" and _is_hub_id(model.path):
        add(model.path, "model", "model.path", weights=True, tokenizer=not model.tokenizer)
    if _is_hub_id(model.tokenizer):
        add(model.tokenizer, "model", "model.tokenizer", tokenizer=True)
    for key, sources in (("data.path", job.data.sources), ("data.val_path", job.data.val_sources)):
        for source in sources:
            if _is_hub_id(source.path):
                add(source.path, "dataset", key, split=source.split)
    return list(found.values())


def patterns(artefact: Artefact, repo_files: list[str]) -> list[str]:
    """The allow-patterns for `artefact`, a repository holding `repo_files`. Models: the
    weights only when the job loads them, as safetensors when the repository has them and
    as the old .bin files only when it does not."""
    if artefact.repo_type == "dataset":
        return list(DATA_FILES)
    allow = list(MODEL_FILES)
    if artefact.weights:
        has_safetensors = any(fnmatch.fnmatch(name, WEIGHTS[0]) for name in repo_files)
        allow += WEIGHTS if has_safetensors else LEGACY_WEIGHTS
    return allow + list(MODEL_CODE if artefact.code else ())


def selected(files: list[str], allow: list[str]) -> list[str]:
    """The files matching one of the allow-patterns (fnmatch, as huggingface_hub matches)."""
    return sorted(f for f in files if any(fnmatch.fnmatch(f, p) for p in allow))


def _split_regex(words: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?:^|{_DELIMITER})(?:{alternatives})(?:{_DELIMITER}|$)", re.I)


def split_files(files: list[str], split: str) -> list[str]:
    """The data files (paths inside a dataset repository) that hold `split`.

    A file belongs to a split when its path names the split, delimited (`train.jsonl`,
    `data/train-00000-of-00001.parquet`, `plain_text/validation-….parquet`, `dev/part.json`).
    A repository whose files name no split at all holds one split: train.
    """
    data = [f for f in selected(files, list(DATA_FILES)) if f.rsplit("/", 1)[-1] not in METADATA]
    words = SPLIT_WORDS.get(split, (split,))
    chosen = [f for f in data if _split_regex(words).search(f)]
    if chosen or split != "train":
        return chosen
    every_word = tuple(w for names in SPLIT_WORDS.values() for w in names)
    return [] if any(_split_regex(every_word).search(f) for f in data) else data


def missing_files(artefact: Artefact, files: list[str]) -> list[str]:
    """What the trainer needs and `files` (a snapshot's, or the repository's) lacks, in words."""
    if artefact.repo_type == "dataset":
        return [f"no {'/'.join(DATA_FILES)} file for split {split!r}" for split in artefact.splits
                if not split_files(files, split)]
    problems = []
    names = set(files)
    if artefact.weights:
        if "config.json" not in names:
            problems.append("no config.json")
        weights = [f for f in files if f.endswith(".safetensors") or fnmatch.fnmatch(f, LEGACY_WEIGHTS[0])]
        if not weights:
            problems.append("no .safetensors (or pytorch_model*.bin) weights")
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"}
    if artefact.tokenizer and not names & tokenizer_files:
        problems.append("no tokenizer files (tokenizer.json, tokenizer_config.json, tokenizer.model)")
    return problems
