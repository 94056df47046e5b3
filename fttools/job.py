"""The model commands as a short job on a GPU node (`ft merge|export|generate JOB --executor slurm`).

    python -m fttools.job merge CHECKPOINT [--out DIR] [--dtype bf16] [--overwrite]
    python -m fttools.job export CHECKPOINT --to vllm [--out DIR] [--merge] [--dtype D] [--overwrite]
    python -m fttools.job generate CHECKPOINT [--max-new-tokens N] (--prompt TEXT | --message TEXT [--system S]
                                                                      | --field NAME=VALUE ...)

The login node resolved the checkpoint folder and checked the words (launcher/evaljob.py); this
runs the same fttools functions the CLI runs, inside the job's image, and prints what the CLI
prints (the job's log: `ft logs ID`). Lm-eval's evaluation is `python -m fttools.lmeval`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftcore.errors import UserError
from ftcore.layout import Checkpoint


def _checkpoint(folder: str) -> Checkpoint:
    found = Checkpoint.at(Path(folder))
    if found is None:
        from fttools.hf_files import write_hf_files

        write_hf_files(Path(folder))  # an intermediate checkpoint: its model files first
        found = Checkpoint.at(Path(folder))
    if found is None:
        raise UserError(f"{folder} holds no loadable model")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fttools.job")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge")
    export = commands.add_parser("export")
    generate = commands.add_parser("generate")
    for sub in (merge, export, generate):
        sub.add_argument("checkpoint")
    for sub in (merge, export):
        sub.add_argument("--out", type=Path)
        sub.add_argument("--dtype")
        sub.add_argument("--overwrite", action="store_true")
    export.add_argument("--to", required=True)
    export.add_argument("--merge", action="store_true")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--prompt")
    generate.add_argument("--message")
    generate.add_argument("--system")
    generate.add_argument("--field", action="append", default=[])
    args = parser.parse_args(argv)
    from fttools import require_stack

    try:
        require_stack()
        ckpt = _checkpoint(args.checkpoint)
        if args.command == "merge":
            from fttools.merge import merge as run_merge

            print(run_merge(ckpt, args.out, args.dtype, args.overwrite))
        elif args.command == "export":
            from fttools.export import export as run_export

            done = run_export(ckpt, args.to, args.out, args.merge, args.dtype, args.overwrite)
            for warning in done.warnings:
                print(f"ft: warning: {warning}", file=sys.stderr)
            print(done.out)
            print(f"serve it with: {done.command}")
        else:
            from fttools.inference import generate as run_generate, job_prompt

            fields = dict(field.split("=", 1) for field in args.field)
            prompt = job_prompt(ckpt, fields) if fields else args.prompt
            print(run_generate(ckpt, prompt, args.max_new_tokens, message=args.message, system=args.system))
    except UserError as err:
        for problem in err.problems:
            print(f"ft: error: {problem}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
