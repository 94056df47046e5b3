"""lm-eval tasks' datasets on the login node: staged into ft's cache, or checked there offline.

    ft stage --tasks hellaswag,./my_task.yaml     # the login node downloads what the tasks read
    ft eval JOB --tasks hellaswag                  # refused while hellaswag's data is not staged

Staging is lm-eval building the tasks, as the evaluation job will, with the hub reachable and
ft's caches named (HF_HUB_CACHE, HF_DATASETS_CACHE): `datasets` downloads and prepares each
task's data there. The check is the same build with HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1:
what it cannot build offline, the job cannot either. Both run in a child process of ft's own
Python (`python -m launcher.taskdata`), so that the offline variables hold from the first import
and the launcher itself never loads lm-eval or datasets.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ftcore import contract, evaltasks
from ftcore.errors import UserError

TIMEOUT_S = 3600  # a large benchmark's download; the check is much faster
_MARK = "ft-taskdata:"  # the child's answer, on its last line of stdout


def _require_lm_eval() -> None:
    """lm-eval and datasets for ft's own Python, found without importing them (no torch here)."""
    import importlib.util

    if importlib.util.find_spec(contract.LM_EVAL.module) is None:
        raise contract.missing_extra("eval", "staging lm-eval tasks (ft stage --tasks)")


def environment(hub_cache: Path, datasets_cache: Path, offline: bool) -> dict[str, str]:
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_DATASETS_CACHE": str(datasets_cache)}
    return {**env, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"} if offline else env


def _run(action: str, tasks: evaltasks.Tasks, hub_cache: Path, datasets_cache: Path) -> dict[str, str | None]:
    """{task spec: why it could not be built, or None}, from the child process."""
    _require_lm_eval()
    env = dict(os.environ, **environment(hub_cache, datasets_cache, offline=action == "check"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "launcher.taskdata", action, tasks.words()]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT_S, cwd="/")
    except subprocess.TimeoutExpired:
        raise UserError(f"lm-eval did not build --tasks {tasks.words()} within {TIMEOUT_S} s") from None
    answer = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    try:
        found = json.loads(answer[-1][len(_MARK):])
    except (IndexError, ValueError):
        raise UserError(f"lm-eval could not be asked about --tasks {tasks.words()}",
                        f"it said: {(done.stderr or done.stdout).strip()[-600:]}") from None
    return {str(k)[:300]: (str(v)[:400] if v is not None else None) for k, v in dict(found).items()}


def stage(tasks: evaltasks.Tasks, hub_cache: Path, datasets_cache: Path) -> list[str]:
    """Download every task's data into the caches; a line per task; all failures raised together."""
    built = _run("stage", tasks, hub_cache, datasets_cache)
    problems = [f"--tasks {spec}: {why}" for spec, why in built.items() if why]
    if problems:
        raise UserError(*problems, hint="run ft stage where the hub can be reached (the login node)")
    return [f"staged lm-eval task {spec} in {datasets_cache}" for spec in built]


def unstaged(tasks: evaltasks.Tasks, hub_cache: Path, datasets_cache: Path, profile: str | None = None) -> list[str]:
    """A problem for each task the evaluation job could not build offline, with the staging command."""
    built = _run("check", tasks, hub_cache, datasets_cache)
    lines = [f"lm-eval task {spec} cannot be built offline from {datasets_cache}: {why}"
             for spec, why in built.items() if why]
    if lines:
        missing = ",".join(spec for spec, why in built.items() if why)
        command = ["ft", "stage", "--tasks", missing, *(["--profile", profile] if profile else [])]
        lines.append(f"the evaluation job reads its datasets offline (HF_DATASETS_OFFLINE=1): stage them on this "
                     f"login node first with: {shlex.join(command)}")
    return lines


def _child(action: str, words: str) -> None:
    """In the child: build each task as the evaluation job will; print the answer."""
    import logging

    logging.disable(logging.WARNING)
    from lm_eval.tasks import TaskManager

    tasks = evaltasks.parse(words)
    manager = TaskManager(include_path=[str(f) for f in tasks.folders] or None)
    found: dict[str, str | None] = {}
    for spec in tasks.specs:
        if spec in tasks.names and not manager.match_tasks([spec]):
            found[spec] = "lm-eval has no task, group or tag of that name"
            continue
        try:
            manager.load([spec])  # builds the task: `datasets` loads (stage: downloads) its data
            found[spec] = None
        except Exception as err:  # noqa: BLE001  any failure to build is the answer, in one line
            found[spec] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    print(_MARK + json.dumps(found))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
