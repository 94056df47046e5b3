"""Rewrite a checkpoint an older ft wrote (torch's pickled resume state) as data, once.

    python -m trainer.convert_older JOB_DIR/checkpoints/step-000100

ft reads no pickle from a checkpoint, so it refuses the resume state older versions wrote
(ft_state/dcp/.metadata and torch.save'd values, ft_state/rng-rank*.pt). This command reads
that state with torch's own reader, which UNPICKLES it and so runs whatever it holds: use it
only on a checkpoint you wrote yourself and kept where nobody else could change it. It writes
the same weights, optimizer state and RNG states in ft's format (trainer/dcp_data.py) next to
the old ones and then swaps them in; the old files stay as ft_state/dcp.older and *.pt.older.
It holds the whole state in memory (no process group: one process reads every shard).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
from pathlib import Path

from ftcore import layout
from ftcore.errors import UserError


def convert(checkpoint: Path) -> list[str]:
    """Convert `checkpoint`'s older resume state; return what was written."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    from .dcp_data import DataSavePlanner, DataWriter

    state_dir = checkpoint / layout.TRAINING_STATE
    older = state_dir / layout.DCP
    if not (older / layout.LEGACY_DCP_INDEX).is_file():
        raise UserError(f"{checkpoint} holds no older resume state ({layout.DCP}/{layout.LEGACY_DCP_INDEX})")
    if (older / layout.DCP_INDEX).exists():
        raise UserError(f"{checkpoint} already holds ft's data-only resume state")
    state: dict = {}  # filled from the index, as torch's own dcp_to_torch_save does (dcp.load would copy it)
    _load_state_dict(state, storage_reader=FileSystemReader(str(older)), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    if not state:
        raise UserError(f"{checkpoint}'s older resume state holds nothing")
    fresh = state_dir / f".{layout.DCP}.converting"
    shutil.rmtree(fresh, ignore_errors=True)
    dcp.save(state, storage_writer=DataWriter(fresh), planner=DataSavePlanner(), no_dist=True)

    written = []
    for pt in sorted(state_dir.glob("rng-rank*.pt")):
        rng = torch.load(pt, weights_only=True)
        encode = lambda t: base64.b64encode(t.numpy().tobytes()).decode()  # noqa: E731
        version, words, gauss = rng["python"]
        as_json = {"python": [version, list(words), gauss], "torch": encode(rng["torch"])}
        if "cuda" in rng:
            as_json["cuda"] = [encode(t) for t in rng["cuda"]]
        target = pt.with_suffix(".json")
        target.write_text(json.dumps(as_json))
        os.replace(pt, pt.with_name(pt.name + ".older"))
        written.append(target.name)
    os.replace(older, state_dir / f"{layout.DCP}.older")
    os.replace(fresh, older)
    return [f"{layout.DCP}/{layout.DCP_INDEX}", *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.convert_older", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder (JOB/checkpoints/step-N) you wrote yourself")
    args = parser.parse_args(argv)
    try:
        written = convert(args.checkpoint)
    except UserError as err:
        print("ft: " + "\n  ".join(err.problems), file=sys.stderr)
        return err.exit_code
    print(f"ft: {args.checkpoint}: wrote {', '.join(written)}; the older files end in .older")
    return 0


if __name__ == "__main__":
    sys.exit(main())
