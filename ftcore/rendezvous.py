"""Who the training processes are and where they meet: rank, world size, first host, port.

Three ways to be started, checked in this order:

* torchrun (or a test) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
* srun sets SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID. ft's sbatch script exports
  MASTER_ADDR (from `scontrol show hostnames`) and MASTER_PORT; a workshop's own script
  (`ft train` under srun) sets neither, so the first node of SLURM's node list is read here;
* neither: one process.

Torch-free, so that `ft train` checks the allocation before it hands over to the trainer,
and the trainer reads the same answer. The port is derived from the job id so that two jobs
sharing a node do not collide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ftcore.errors import UserError

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


# --- who am I ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"  # "torchrun" | "slurm" | "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def number(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    """A variable the launcher sets to a whole number; anything else is named, not a traceback."""
    text = env.get(name)
    if text in (None, "") and default is not None:
        return default
    text = str(text).strip()
    if not text.isascii() or not text.isdigit():
        raise UserError(f"${name} is {str(text)[:40]!r}, not a whole number: it should be set by srun or "
                        "torchrun, not by hand", hint=f"unset {name} (or start the job with srun/torchrun)")
    return int(text)


def job_id(env: Mapping[str, str]) -> str | None:
    """SLURM's id of this job (`15`, or `15_3` for task 3 of an array), checked: it names folders."""
    if not env.get("SLURM_JOB_ID"):
        return None
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{number(env, 'SLURM_ARRAY_JOB_ID')}_{number(env, 'SLURM_ARRAY_TASK_ID')}"
    return str(number(env, "SLURM_JOB_ID"))


def detect(env: Mapping[str, str]) -> DistEnv:
    """Rank and rendezvous from the environment; torchrun's variables win over SLURM's."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=number(env, "RANK"),
            world_size=number(env, "WORLD_SIZE"),
            local_rank=number(env, "LOCAL_RANK", 0),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=number(env, "MASTER_PORT", 29500),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return _from_slurm(env)
    return DistEnv()


def _from_slurm(env: Mapping[str, str]) -> DistEnv:
    if env.get("MASTER_ADDR"):
        master_addr = env["MASTER_ADDR"]
    else:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        try:
            hosts = expand_hostlist(nodelist)
        except ValueError as err:
            raise UserError(f"cannot find the first node of this job: {err}") from None
        master_addr = hosts[0] if hosts else "127.0.0.1"
    return DistEnv(
        rank=number(env, "SLURM_PROCID"),
        world_size=number(env, "SLURM_NTASKS"),
        local_rank=number(env, "SLURM_LOCALID", 0),
        master_addr=master_addr,
        master_port=number(env, "MASTER_PORT", 0) or master_port(number(env, "SLURM_JOB_ID", 0)),
        launcher="slurm",
    )


def allocation_problems(num_nodes: int, devices: int, procs: DistEnv, env: Mapping[str, str]) -> list[str]:
    """What differs between the job's layout (num_nodes × devices, one process per GPU) and
    the processes that were started (`procs`, read from `env`), each saying what to change."""
    wanted = num_nodes * devices
    if procs.launcher == "slurm":
        nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
        problems = []
        if nodes != num_nodes:
            problems.append(
                f"the job wants trainer.num_nodes={num_nodes} node(s) but srun runs it on {nodes}: "
                f"write `#SBATCH --nodes={num_nodes}` in the script, or pass trainer.num_nodes={nodes} "
                '(trainer.num_nodes="${SLURM_NNODES}" follows the allocation)')
        per_node = procs.world_size // max(nodes, 1)
        if per_node * nodes != procs.world_size:
            problems.append(
                f"srun started {procs.world_size} tasks on {nodes} nodes, not the same number on each: "
                f"write `#SBATCH --ntasks-per-node={devices}` in the script")
        elif per_node != devices:
            problems.append(
                f"the job wants trainer.devices={devices} process(es) per node (one per GPU) but srun started "
                f"{per_node} task(s) per node: write `#SBATCH --ntasks-per-node={devices}` in the script "
                f"(srun starts one task per node unless told otherwise), or pass trainer.devices={per_node}")
        return problems
    if procs.world_size == wanted:
        return []
    if procs.launcher == "torchrun":
        return [f"the job wants trainer.num_nodes × trainer.devices = {num_nodes} × {devices} = {wanted} processes "
                f"but torchrun started {procs.world_size}: run torchrun --nnodes {num_nodes} "
                f"--nproc-per-node {devices}, or change trainer.num_nodes / trainer.devices"]
    return [f"the job wants trainer.num_nodes × trainer.devices = {num_nodes} × {devices} = {wanted} processes "
            f"but this is one process with no scheduler: start it under srun (one task per GPU) or "
            f"torchrun --nproc-per-node {devices}, or pass trainer.devices=1 trainer.num_nodes=1"]
