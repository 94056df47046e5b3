"""lm-evaluation-harness on a checkpoint, through lm-eval's own Python API.

    ft eval JOB --tasks hellaswag,./my_task.yaml [--limit N] [--num-fewshot K] --executor local
    python -m fttools.lmeval CHECKPOINT --tasks ... --out RUN/eval/<time>-lm-eval.json   # the evaluation job

`simple_evaluate` with lm-eval's `hf` model, given what `lm_eval --model hf` would be given for
the same checkpoint (ftcore.evaltasks.model_args: a LoRA adapter on its base through `peft=`,
no merge) and lm-eval's own defaults for everything ft does not name, so the figures are the
ones its CLI prints. The results file is the one lm-eval's EvaluationTracker writes, moved
into place whole: lm-eval's results JSON, unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ftcore import contract, evaltasks
from ftcore.errors import UserError
from ftcore.layout import Checkpoint


def require_lm_eval() -> None:
    contract.require_extra("eval", "ft eval --tasks (lm-evaluation-harness)")


def evaluate(ckpt: Checkpoint, tasks: evaltasks.Tasks, out: Path, limit: int | None = None,
             num_fewshot: int | None = None, batch_size: str | int = 1, device: str | None = None,
             log_samples: bool = False, dtype: str | None = None) -> dict[str, Any]:
    """Run the tasks on `ckpt`; write lm-eval's results JSON to `out` (and, with
    `log_samples`, its per-task samples into `<out without .json>-samples/`); return the results."""
    require_lm_eval()
    from fttools import require_stack

    require_stack()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as lm-eval's CLI sets it
    if device is None:  # lm-eval's `hf` model assumes cuda unless told
        from fttools.inference import pick_device

        device = pick_device().type
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(f) for f in tasks.folders] or None)
    unknown = [name for name in tasks.names if not manager.match_tasks([name])]
    if unknown:
        raise UserError(f"--tasks: lm-eval {contract.dist_version('lm-eval')} has no task, group or tag "
                        f"{', '.join(unknown)}", hint="`lm-eval ls tasks` lists them")
    names = [match for name in tasks.names for match in manager.match_tasks([name])]
    with tempfile.TemporaryDirectory(prefix=".lm-eval-", dir=out.parent if out.parent.is_dir() else None) as scratch:
        tracker = EvaluationTracker(output_path=str(Path(scratch) / "results.json"))
        try:
            results = simple_evaluate(model="hf", model_args=evaltasks.model_args(ckpt, dtype),
                                      tasks=[*dict.fromkeys(names), *(str(f) for f in tasks.files)],
                                      num_fewshot=num_fewshot, batch_size=batch_size, device=device, limit=limit,
                                      log_samples=log_samples, evaluation_tracker=tracker, task_manager=manager)
        except (KeyError, ValueError) as err:  # lm-eval's word for a task it cannot build
            raise UserError(f"lm-eval could not run --tasks {tasks.words()}: {err}") from None
        samples = results.pop("samples") if log_samples else None
        tracker.save_results_aggregated(results=results, samples=samples)
        for task in results.get("configs", {}) if log_samples else ():
            tracker.save_results_samples(task_name=task, samples=samples[task])
        _move_into_place(Path(scratch), out)
    return results


def _move_into_place(scratch: Path, out: Path) -> None:
    """lm-eval wrote `results_<date>.json` and `samples_<task>_<date>.jsonl` into `scratch`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    (written,) = scratch.glob("results_*.json")
    samples = sorted(scratch.glob("samples_*.jsonl"))
    if samples:
        folder = out.with_name(out.name.removesuffix(".json").removesuffix("-lm-eval") + evaltasks.SAMPLES_SUFFIX)
        folder.mkdir()
        for path in samples:
            task = path.name.removeprefix("samples_").rpartition("_")[0]
            os.replace(path, folder / f"{task}.jsonl")
    os.replace(written, out)  # the results last: a reader never sees results without their samples


def main(argv: list[str] | None = None) -> int:
    """The evaluation job's command (inside the job's image, on a GPU node)."""
    parser = argparse.ArgumentParser(prog="python -m fttools.lmeval", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument("--batch-size", default="1")
    parser.add_argument("--dtype")
    parser.add_argument("--log-samples", action="store_true")
    args = parser.parse_args(argv)
    try:
        ckpt = Checkpoint.at(Path(args.checkpoint))
        if ckpt is None:
            from fttools.hf_files import write_hf_files

            write_hf_files(Path(args.checkpoint))  # an intermediate checkpoint: its model files first
            ckpt = Checkpoint.at(Path(args.checkpoint))
        tasks = evaltasks.parse(args.tasks)
        batch = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
        results = evaluate(ckpt, tasks, args.out, args.limit, args.num_fewshot, batch, None, args.log_samples,
                           args.dtype)
    except UserError as err:
        for problem in err.problems:
            print(f"ft: error: {problem}", file=sys.stderr)
        return err.exit_code
    for task, metric, value, stderr in evaltasks.scores(results):
        print(f"{task}  {metric}  {value} ± {stderr}")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
