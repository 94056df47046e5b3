"""lm-evaluation-harness tasks as ft names them: one owner for what `--tasks` means, what
lm-eval is told about a checkpoint, and where the results go. Torch-free: the launcher (which
submits the evaluation job) and fttools (which runs lm-eval) read the same rules.

    ft eval JOB --tasks hellaswag,mmlu,./my_task.yaml

`--tasks` is a comma-separated list. A word that ends in .yaml/.yml (or names a folder) is a
user's task file: it is loaded by its path, and its folder is added to lm-eval's
`--include_path` so the files it `include:`s beside it resolve (lm-eval's own semantics).
Any other word is one of lm-eval's task, group or tag names.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from ftcore import layout
from ftcore.errors import UserError
from ftcore.layout import Checkpoint

RESULTS_SUFFIX = "-lm-eval.json"  # <run>/eval/<time>-lm-eval.json: lm-eval's results JSON, unchanged
SAMPLES_SUFFIX = "-lm-eval-samples"  # <run>/eval/<time>-lm-eval-samples/<task>.jsonl, with --log-samples
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.*\-]{0,199}$")  # lm-eval's task names (globs allowed)
_FILE = (".yaml", ".yml")
_NOT_SCORES = ("alias", "name", "sample_len", "sample_count")  # what lm-eval's results hold beside the metrics


@dataclass(frozen=True)
class Tasks:
    names: tuple[str, ...]  # lm-eval's registered task, group or tag names
    files: tuple[Path, ...]  # the user's task YAML files (absolute)
    folders: tuple[Path, ...]  # their folders: lm-eval's include_path

    @property
    def specs(self) -> list[str]:
        """What lm-eval's TaskManager.load is given: names, and the files by their paths."""
        return [*self.names, *(str(path) for path in self.files)]

    def words(self) -> str:
        """The --tasks value that names the same tasks (files by their absolute paths)."""
        return ",".join(self.specs)


def parse(text: str, base: Path | None = None) -> Tasks:
    """`hellaswag,./my_task.yaml` → Tasks; every bad word is reported at once."""
    names, files, problems = [], [], []
    for word in (w.strip() for w in str(text).split(",")):
        if not word:
            continue
        looks_like_file = word.endswith(_FILE) or "/" in word or word.startswith(("~", "."))
        if looks_like_file:
            path = Path(word).expanduser()
            path = path if path.is_absolute() else (base or Path.cwd()) / path
            path = path.resolve() if path.exists() else path
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix in _FILE and p.is_file())
                if not found:
                    problems.append(f"--tasks {word}: the folder holds no task .yaml file")
                files += found
            elif not path.is_file():
                problems.append(f"--tasks {word}: no such task file ({path})")
            elif not word.endswith(_FILE):
                problems.append(f"--tasks {word}: a task file is a .yaml file")
            else:
                files.append(path)
        elif _NAME.match(word):
            names.append(word)
        else:
            problems.append(f"--tasks {word[:80]!r} is neither an lm-eval task name (letters, digits, _ . - *) "
                            "nor a task .yaml file")
    if problems:
        raise UserError(*problems)
    if not names and not files:
        raise UserError("--tasks names no task: give lm-eval task names or task .yaml files, comma-separated "
                        "(e.g. --tasks hellaswag,./my_task.yaml)", hint="`lm-eval ls tasks` lists lm-eval's tasks")
    folders = tuple(dict.fromkeys(path.parent for path in files))
    return Tasks(tuple(dict.fromkeys(names)), tuple(dict.fromkeys(files)), folders)


def model_args(ckpt: Checkpoint, dtype: str | None = None) -> dict[str, str]:
    """lm-eval's `hf` model arguments for a checkpoint: a full model by its folder; a LoRA
    adapter on its base (`peft=`, no merge), with the tokenizer training saved beside it."""
    if ckpt.is_lora:
        base = ckpt.base
        if not base:
            raise UserError(f"{ckpt.path / 'adapter_config.json'} names no base_model_name_or_path")
        args = {"pretrained": base, "peft": str(ckpt.path), "tokenizer": str(ckpt.path)}
    else:
        args = {"pretrained": str(ckpt.path)}
    if dtype:
        args["dtype"] = dtype
    return args


def results_folder(checkpoint: Path) -> Path:
    """<run>/eval for a job's checkpoint; `<checkpoint>-eval` beside a loose one."""
    run = layout.owning_run(checkpoint)
    return run / layout.EVAL if run is not None else checkpoint.with_name(f"{checkpoint.name}-{layout.EVAL}")


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def results_name(when: str) -> str:
    return f"{when}{RESULTS_SUFFIX}"


def all_results(folder: Path) -> list[Path]:
    """The results files in a run's eval folder, oldest first (their names start with the time)."""
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith(RESULTS_SUFFIX) and p.is_file())
    except OSError:
        return []


def scores(results: dict) -> list[tuple[str, str, str, str]]:
    """(task, metric, value, stderr) rows of lm-eval's results JSON (its "results" mapping:
    `acc,none`, `acc_stderr,none`, ...), as text."""
    rows = []
    table = results.get("results") if isinstance(results, dict) else None
    for task, metrics in sorted((table or {}).items()):
        if not isinstance(metrics, dict):
            continue
        for key, value in metrics.items():
            metric, _, filter_name = str(key).partition(",")
            if metric in _NOT_SCORES or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            err = metrics.get(f"{metric}_stderr,{filter_name}" if filter_name else f"{metric}_stderr")
            shown = metric if filter_name in ("", "none") else f"{metric} ({filter_name})"
            rows.append((str(task), shown, f"{value:.4f}",
                         f"{err:.4f}" if isinstance(err, (int, float)) else "-"))
    return rows
