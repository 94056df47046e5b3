"""Fuzz ft's checkpoint reading: seeded mutations of every file of a real checkpoint.

    python tests/trainer/fuzz_checkpoint.py JOB_DIR WORK_DIR CANARY [--seed N] [--rounds N]

JOB_DIR holds a trained tiny job whose step-000001 checkpoint has the distributed state only.
The job is copied to WORK_DIR; each round restores the checkpoint, mutates one of its files
(bytes flipped or cut, pickles built from each code-running opcode, huge sizes, wrong types,
links to /dev/zero, a FIFO) and loads it the two ways ft does: as the trainer resumes
(`checkpointing.load`) and as `ft export` rebuilds the model (`write_hf_from_state`). Every
outcome must be a load or a UserError (exit 2 with its one line); anything else is a surprise.
A payload creates CANARY if it runs. The address space is capped a few GiB above what the
process holds once the model is built, so a size the bounds let through fails to allocate,
and that is a surprise too. Prints one JSON line: counts and the surprises.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import random
import resource
import shutil
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

HUGE = [2**34, 2**40, 2**62, 2**64, -1, 10**400, 1e308, float("inf")]
WRONG = [None, True, "x", "/dev/zero", [], {}, [1, "a"], {"tuple": 1}, {"dict": []}, 1.5, -7, 10**30]


class Reduce:
    """A pickle that calls `func(*args)` through REDUCE."""

    def __init__(self, func, *args):
        self.call = (func, args)

    def __reduce__(self):
        return self.call


def payloads(canary: Path) -> list[bytes]:
    """Pickles that run `touch CANARY` through each opcode that calls or builds something."""
    command = f"touch {canary}".encode()
    system = Reduce(os.system, command.decode())
    found = [pickle.dumps(system, protocol=p) for p in range(6)]  # GLOBAL (0-3) and STACK_GLOBAL (4-5) + REDUCE
    found += [
        b"(S'" + command + b"'\nios\nsystem\n.",  # INST
        b"(cos\nsystem\nS'" + command + b"'\no.",  # OBJ
        b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R.",  # protocol 2 REDUCE
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(command)])
        + command + b"\x85R.",  # FRAME + STACK_GLOBAL
        # BUILD that rebinds a method of an allowed class (pathlib.PosixPath.exists), then a call
        b"\x80\x02cpathlib\nPosixPath\n}X\x06\x00\x00\x00existscos\nsystem\n)Rsb.",
        # NEWOBJ / NEWOBJ_EX of a class whose construction runs the command (subprocess.Popen)
        b"\x80\x02csubprocess\nPopen\n]X\x05\x00\x00\x00touchaX" + len(str(canary)).to_bytes(4, "little")
        + str(canary).encode() + b"a\x85\x81.",
        b"\x80\x04csubprocess\nPopen\n]X\x05\x00\x00\x00touchaX" + len(str(canary)).to_bytes(4, "little")
        + str(canary).encode() + b"a\x85}\x92.",
        b"\x80\x02\x82\x01.",  # EXT1: the copyreg extension registry
        b"\x80\x02X\x01\x00\x00\x00xQ.",  # BINPERSID: a persistent id (torch.load's storages)
    ]
    import io
    import zipfile

    archive = io.BytesIO()  # torch.save's layout, its data.pkl a payload
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", found[2])
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return found + [archive.getvalue()]


def json_paths(value, path=()):
    """Every (path, value) inside a JSON document."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_paths(v, path + (i,))


def set_at(document, path, value):
    if not path:
        return value
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return document


def mutate(rng: random.Random, files: dict[str, bytes], state: Path, pickles: list[bytes]) -> str:
    """Change one file of the checkpoint's ft_state (restored before); return what was done."""
    name = rng.choice(sorted(files))
    path, data = state / name, files[name]
    kinds = ["flip", "cut", "grow", "pickle", "link"]
    if name.endswith(".json"):
        kinds += ["wrong-type", "huge", "wrong-type", "huge"]
    if name.endswith(".distcp"):
        kinds += ["pickle-in-span", "pickle-in-span"]
    kind = rng.choice(kinds)
    if kind == "flip":
        changed = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            if changed:
                changed[rng.randrange(len(changed))] = rng.randrange(256)
        path.write_bytes(bytes(changed))
    elif kind == "cut":
        path.write_bytes(data[:rng.randrange(len(data) + 1)])
    elif kind == "grow":
        path.write_bytes(data + os.urandom(rng.randint(1, 4096)))
    elif kind == "pickle":
        path.write_bytes(rng.choice(pickles))
    elif kind == "link":
        path.unlink()
        target = rng.choice(["/dev/zero", "/dev/urandom", "fifo", "/etc/passwd", "dir"])
        if target == "fifo":
            os.mkfifo(path)
        elif target == "dir":
            path.mkdir()
        else:
            path.symlink_to(target)
        kind += ":" + target
    elif kind == "pickle-in-span":  # a pickle where the index says a value or a tensor lies
        index = json.loads(files["dcp/index.json"])
        values = [e["bytes"] for e in index["entries"] if "bytes" in e]
        spans = [s for _, s in json_paths(index) if isinstance(s, dict) and "offset" in s and "length" in s]
        span = rng.choice(values if rng.random() < 0.5 else spans)  # the optimizer's values are few
        payload = rng.choice(pickles)
        if rng.random() < 0.25:
            changed = bytearray(data)
            changed[span["offset"]:span["offset"] + span["length"]] = payload[:span["length"]].ljust(span["length"], b".")
            path.write_bytes(bytes(changed))
        else:
            path.write_bytes(data + payload)
            span.update(offset=len(data), length=len(payload))
            (state / "dcp/index.json").write_text(json.dumps(index))
    else:
        document = json.loads(data)
        places = list(json_paths(document))
        spans = [p for p, _ in places if p and p[-1] in ("offset", "length")]
        where = rng.choice(spans) if spans and rng.random() < 0.5 else rng.choice(places)[0]
        value = rng.choice(HUGE if kind == "huge" else WRONG)
        text = json.dumps(set_at(document, where, value))
        path.write_text(text)
        kind += f":{'/'.join(map(str, where))}"
    return f"{name} {kind}"


def restore(state: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = state / name
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.exists() or path.is_symlink():
            path.unlink()
        path.write_bytes(data)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("canary", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()

    import torch

    from ftcore import layout
    from ftcore.errors import UserError
    from ftcore.schema import load_job
    from trainer import checkpointing, dist
    from trainer.model import build
    from trainer.tokenizer import load_tokenizer
    from trainer import update

    torch.set_num_threads(1)
    job_dir = args.work_dir / "job"
    shutil.copytree(args.job_dir, job_dir)
    for extra in sorted((job_dir / layout.CHECKPOINTS).glob("step-*"))[1:]:
        shutil.rmtree(extra)
    checkpoint = layout.step_dir(job_dir / layout.CHECKPOINTS, 1)
    state = checkpoint / layout.TRAINING_STATE
    files = {p.relative_to(state).as_posix(): p.read_bytes() for p in state.rglob("*") if p.is_file()
             and p.name != layout.COMPLETE_MARKER}

    job = load_job(job_dir / layout.CONFIG)
    env = dist.detect({})
    device = torch.device("cpu")
    base_dir, base_ref = checkpointing.base_reference(job, job_dir)
    built = build(job, env, device, load_tokenizer(job), base_dir=base_dir)
    optimizer = update.optimizer(job.optim, built.trainable)
    checkpointing.load(checkpoint, built, optimizer, env)  # the honest checkpoint loads

    # What the process holds now, plus 3 GiB: a 16 GiB claim cannot be met.
    with open("/proc/self/statm") as f:
        held = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (held + (3 << 30), resource.RLIM_INFINITY))

    rng = random.Random(args.seed)
    pickles = payloads(args.canary)
    exists = pathlib.PosixPath.exists
    counts = {"loaded": 0, "refused": 0}
    kinds, surprises = set(), []
    for round_ in range(args.rounds):
        restore(state, files)
        what = mutate(rng, files, state, pickles)
        kinds.add(what.split()[1].split(":")[0])
        out = args.work_dir / "hf"
        shutil.rmtree(out, ignore_errors=True)
        for reader in ("resume", "export"):
            try:
                if reader == "resume":
                    checkpointing.load(checkpoint, built, optimizer, env)
                else:
                    checkpointing.write_hf_from_state(checkpoint, job, base_ref, out)
                counts["loaded"] += 1
            except UserError as err:
                counts["refused"] += 1
                line = "\n".join(err.problems)
                if "\n" in line or "alloc" in line.lower() or "MemoryError" in line or "Traceback" in line:
                    surprises.append(f"{what} ({reader}): {line[:500]}")
            except BaseException as err:  # noqa: BLE001 - what the fuzz is for
                surprises.append(f"{what} ({reader}): {type(err).__name__}: {str(err)[:300]} "
                                 f"{traceback.format_exc()[-1500:]}")
            if args.canary.exists():
                surprises.append(f"{what} ({reader}): THE PAYLOAD RAN")
                args.canary.unlink()
            if pathlib.PosixPath.exists is not exists:
                surprises.append(f"{what} ({reader}): pathlib.PosixPath.exists was rebound")
                pathlib.PosixPath.exists = exists
    print(json.dumps({**counts, "kinds": len(kinds), "kinds_seen": sorted(kinds), "surprises": surprises}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
