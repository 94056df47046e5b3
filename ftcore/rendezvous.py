"""Where the training processes of one SLURM job meet: the first host and a port.

The sbatch script exports MASTER_ADDR (from `scontrol show hostnames`) and MASTER_PORT; a
workshop's own script (`ft train` under srun) sets neither, so the trainer reads SLURM's
node list itself. Both use the port rule below, derived from the job id so that two jobs
sharing a node do not collide.
"""

from __future__ import annotations

import re

PORT_BASE = 20000
PORT_SPAN = 20000


def master_port(job_id: int) -> int:
    """The port for job `job_id`: the script computes the same in shell (render passes these)."""
    return PORT_BASE + job_id % PORT_SPAN


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(text: str) -> list[str]:
    """SLURM's compressed host list (`gpu[01-03,07],login-a1`) as host names, in order.

    The same expansion as `scontrol show hostnames`, for the forms SLURM writes into
    SLURM_JOB_NODELIST: comma-separated names, each with bracketed ranges that keep their
    zero padding, several bracket groups per name included (`rack[1-2]-gpu[1-2]`).
    """
    hosts: list[str] = []
    for item in _split_top_level(text.strip()):
        hosts += _expand_one(item, text)
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ValueError(f"unbalanced brackets in host list {text!r}")
    if current:
        items.append(current)
    return [i for i in items if i]


def _expand_one(item: str, whole: str) -> list[str]:
    start = item.find("[")
    if start < 0:
        return [item]
    stop = item.index("]", start)
    prefix, ranges, rest = item[:start], item[start + 1 : stop], item[stop + 1 :]
    numbers = []
    for part in ranges.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ValueError(f"cannot read the range {part!r} in host list {whole!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        width = len(low)
        numbers += [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    return [f"{prefix}{n}{tail}" for n in numbers for tail in _expand_one(rest, whole)]
