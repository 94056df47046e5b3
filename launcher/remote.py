"""`--cluster NAME`: ft on a laptop, the job on a cluster, over the user's own OpenSSH.

    ft submit --cluster NAME --factory my.yaml lora.rank=16   # checked here, submitted there
    ft jobs --cluster NAME ; ft logs --cluster NAME 4242 -f ; ft plot --cluster NAME 4242

The login node runs ft itself (`clusters.NAME.ft`, default `ft`): every command is one
`ssh NAME -- ft ...` that the cluster's ft answers with its own scheduler and folders, so
states, logs and cancels mean there exactly what they mean on the login node. The laptop
resolves and validates the job before any connection, sends the resolved config and the
small files the job names, and reads back only what it shows (`ft plot`: the metrics it
draws, through RemoteFiles, the remote implementation of launcher.jobfiles).

SSH: OpenSSH's `ssh` only, BatchMode=yes (never a prompt), the user's ~/.ssh/config as it is
(so a configured ControlMaster/ControlPath connection is reused: one login, many commands).
Every word sent is shlex-quoted, NAME, host and user are checked against option and shell
injection, and `--` ends ssh's options. Nothing of this machine's environment travels: no
variable is forwarded and no secret's value may appear in a command line or a file sent.
"""

from __future__ import annotations

import os
import re
import secrets as random
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Iterable

from ftcore import layout, secrets
from ftcore.errors import UserError
from launcher.jobfiles import JobFiles

# A cluster name, host alias or host name: no leading dash (an ssh option), no space, quote,
# newline or shell character. User names likewise.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
# A file the job names on this machine is sent when it is at most this large; a larger one
# (or a folder) is the user's to copy, and the job names it by its path on the cluster.
SEND_LIMIT_BYTES = 64 * 2**20
CONNECT_TIMEOUT_S = 20
# The remote command announces itself on stderr first: what ssh printed before this line is
# ssh's own (a refused login), what follows is the cluster's ft.
_MARK = "ft-remote-connected"
SSH_CONFIG_ENV = "FT_SSH_CONFIG"  # an ssh_config file used instead of ~/.ssh/config


@dataclass(frozen=True)
class Cluster:
    name: str
    host: str  # the ssh destination: a Host alias of ~/.ssh/config, or a host name
    user: str | None = None
    port: int | None = None
    ft: tuple[str, ...] = ("ft",)  # the command that runs ft on the login node
    ft_home: str | None = None  # FT_HOME there (default: the login node's own)
    profile: Path | None = None  # this machine's copy of the cluster's site profile

    @property
    def destination(self) -> list[str]:
        """ssh's words that name the host (each checked: none can be read as an option)."""
        words = []
        if self.port:
            words += ["-p", str(self.port)]
        if self.user:
            words += ["-l", self.user]
        return [*words, "--", self.host]

    @property
    def ssh_line(self) -> str:
        """How a person would type the same ssh destination."""
        return shlex.join([w for w in self.destination if w != "--"])


def _check_name(what: str, value: object, pattern: re.Pattern = _NAME) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise UserError(f"{what} {value!r} is not a host or user name ft will pass to ssh: letters, digits, "
                        "'.', '_' and '-' only, not starting with '-'")
    return value


def cluster(name: str) -> Cluster:
    """NAME from ft's config (`clusters: {NAME: {host, user, port, ft, ft_home, profile}}`),
    else NAME itself as the ssh destination (a Host alias of ~/.ssh/config)."""
    from ftcore.files import expand
    from launcher.config import user_config

    _check_name("--cluster", name)
    entries = user_config().get("clusters") or {}
    entry = entries.get(name)
    if entry is None:
        return Cluster(name, name)
    known = ("host", "user", "port", "ft", "ft_home", "profile")
    problems = [f"clusters.{name}: unknown key {key!r}; it may hold {', '.join(known)}" for key in entry if key not in known]
    host = entry.get("host", name)
    for what, value, pattern in (("host", host, _NAME), ("user", entry.get("user"), _USER)):
        if value is not None:
            try:
                _check_name(f"clusters.{name}.{what}", value, pattern)
            except UserError as err:
                problems += err.problems
    port = entry.get("port")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        problems.append(f"clusters.{name}.port must be a port number")
    command = entry.get("ft", "ft")
    words = shlex.split(command) if isinstance(command, str) else None
    if not words:
        problems.append(f"clusters.{name}.ft must be the command that runs ft on the login node, e.g. "
                        "`ft` or `/opt/ft/venv/bin/ft`")
    for key in ("ft_home", "profile"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not value or "\n" in value or "\0" in value):
            problems.append(f"clusters.{name}.{key} must be a path")
    if problems:
        raise UserError(*problems)
    profile = expand(entry["profile"]) if entry.get("profile") else None
    return Cluster(name, host, entry.get("user"), port, tuple(words or ()), entry.get("ft_home"), profile)


# --------------------------------------------------------------------------- ssh


def remote_command(c: Cluster, words: Iterable[str]) -> str:
    """The command line the login node's shell runs: every word quoted, none a secret."""
    words = [str(w) for w in words]
    for word in words:
        if "\0" in word:
            raise UserError("a NUL byte cannot be sent to the cluster")
    problems = secrets.find(words, "the command sent to the cluster")
    if problems:
        raise UserError(*problems)
    env = ["env", f"FT_HOME={c.ft_home}"] if c.ft_home else []
    return shlex.join([*env, *words])


def ssh_argv(c: Cluster, command: str) -> list[str]:
    """ssh as the user configured it, never prompting, forwarding nothing."""
    argv = ["ssh"]
    if os.environ.get(SSH_CONFIG_ENV):
        argv += ["-F", os.environ[SSH_CONFIG_ENV]]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
             "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
             "-o", "SendEnv=-*", "-T"]
    return [*argv, *c.destination, command]


def _login_hint(c: Cluster) -> str:
    return (f"ft never asks for a password or a code (ssh BatchMode). Open one connection yourself, once, in a "
            f"terminal: `ssh -fNM {c.ssh_line}` (it asks for the password and second factor there), and let ft "
            f"reuse it: in {os.environ.get(SSH_CONFIG_ENV) or '~/.ssh/config'}, under `Host {c.host}`: `ControlMaster auto`, "
            "`ControlPath ~/.ssh/cm-%C`, `ControlPersist 8h`")


def _connection_error(c: Cluster, said: str) -> UserError:
    said = said.strip()
    last = said.splitlines()[-1] if said else "(nothing)"
    if "Permission denied" in said or "Too many authentication failures" in said:
        return UserError(f"cluster {c.name}: {c.host} wants a password or a second factor "
                         f"(ssh said: {last})", hint=_login_hint(c))
    if "Host key verification failed" in said or "REMOTE HOST IDENTIFICATION HAS CHANGED" in said:
        return UserError(f"cluster {c.name}: {c.host}'s host key is not known here, or changed (ssh said: {last})",
                         hint=f"check and accept it once with `ssh {c.ssh_line}` in a terminal")
    return UserError(f"cluster {c.name}: cannot connect to {c.host} (ssh said: {last})",
                     hint=f"try `ssh {c.ssh_line} true` in a terminal")


def _not_installed(c: Cluster, status: int, said: str) -> UserError | None:
    if status == 127 and ("not found" in said or "No such file" in said):
        return UserError(f"cluster {c.name}: `{shlex.join(c.ft)}` is not a command on {c.host} "
                         f"(it said: {said.strip().splitlines()[-1]})",
                         hint="install ft on the login node (`pip install --user ft-launch`, or a module) and "
                              f"name its command in ft's config: clusters.{c.name}.ft")
    return None


def run(c: Cluster, words: list[str], input: bytes | None = None, capture: bool = False,
        timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
    """`words` run on the login node. Its stdout streams to ours unless `capture`; its stderr
    streams to ours once the connection is up. A refused login raises one UserError that
    says what to do; nothing ever waits at a prompt.

    The pipes are read by threads and the end is ssh's exit, not their end of file: a master
    connection that ssh leaves running (ControlPersist) may hold them open."""
    command = f"echo {_MARK} >&2; exec " + remote_command(c, words)
    argv = ssh_argv(c, command)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE)
    before: list[bytes] = []  # ssh's own words
    after: list[bytes] = []  # the last lines the remote command wrote on stderr
    out: list[bytes] = []
    connected = threading.Event()

    def relay() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if connected.is_set():
                sys.stderr.buffer.write(line)
                sys.stderr.buffer.flush()
                after[:] = [*after[-20:], line]
            elif line.strip() == _MARK.encode():
                connected.set()
            else:
                before.append(line)

    def collect() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(input or b"")
            proc.stdin.close()
        except BrokenPipeError:
            pass

    threads = [threading.Thread(target=relay, daemon=True)]
    threads += [threading.Thread(target=collect, daemon=True)] if capture else []
    threads += [threading.Thread(target=feed, daemon=True)] if input is not None else []
    for thread in threads:
        thread.start()
    try:
        status = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise UserError(f"cluster {c.name}: no answer within {timeout:.0f} s") from None
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    for thread in threads:
        thread.join(timeout=5)
    said = b"".join(before).decode(errors="replace")
    if not connected.is_set():
        raise _connection_error(c, said)
    problem = _not_installed(c, status, b"".join(after).decode(errors="replace"))
    if problem:
        raise problem
    return subprocess.CompletedProcess(argv, status, b"".join(out), b"".join(after))


def ft(c: Cluster, args: list[str], capture: bool = False, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The cluster's ft with `args` (each a word: a job id, a path, an option)."""
    return run(c, [*c.ft, *args], capture=capture, input=input)


def ft_passthrough(c: Cluster, args: list[str]) -> int:
    """Run the cluster's ft and hand back its exit status (its output is already ours)."""
    sys.stdout.flush()
    return ft(c, args).returncode


# --------------------------------------------------------------------------- the folder over ssh


class RemoteFiles(JobFiles):
    """A job folder on the cluster, read with POSIX tools over the same ssh (one call per read)."""

    def __init__(self, c: Cluster, root: PurePosixPath):
        self.cluster = c
        self.root = PurePosixPath(root)

    def _path(self, name: str | PurePath) -> str:
        path = self.root / PurePosixPath(str(name))
        if ".." in path.parts:
            raise UserError(f"{name}: not inside the job folder")
        return str(path)

    def _read(self, words: list[str]) -> bytes:
        result = run(self.cluster, words, capture=True)
        if result.returncode != 0:
            raise FileNotFoundError(words[-1])
        return result.stdout

    def read_from(self, name: str | PurePath, offset: int) -> bytes:
        return self._read(["tail", "-c", f"+{offset + 1}", "--", self._path(name)])

    def tail(self, name: str | PurePath, size: int) -> bytes:
        return self._read(["tail", "-c", str(size), "--", self._path(name)])

    def glob(self, pattern: str, by_time: bool = False) -> list[PurePath]:
        raise UserError("listing a folder on the cluster goes through the cluster's ft (`ft jobs --cluster`)")

    def write(self, files: dict[str, str]) -> None:
        """Each file whole, as one tar stream into the folder (made if missing)."""
        import io
        import tarfile

        problems = [p for name, text in files.items() for p in secrets.find(text, name)]
        if problems:
            raise UserError(*problems)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(str(PurePosixPath(name)))
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        self._send(buffer.getvalue())

    def _send(self, tar: bytes) -> None:
        root = str(self.root)
        result = run(self.cluster, ["sh", "-c", 'mkdir -p -- "$1" && tar -x -f - -C "$1"', "sh", root],
                     input=tar, capture=True)
        if result.returncode != 0:
            raise UserError(f"cluster {self.cluster.name}: could not write {root} there")


# --------------------------------------------------------------------------- submit


@dataclass(frozen=True)
class Upload:
    """What `ft submit --cluster` sends: the resolved job, and the files it names here."""

    config: dict[str, Any]  # the job as resolved here, paths rewritten to where they will be
    files: dict[str, Path]  # name in the upload folder → this machine's file
    sent: tuple[str, ...]  # `data.path: ./qa.jsonl → <upload>/files/data.path-qa.jsonl`, for the summary


UPLOAD_MARK = "@UPLOAD@"  # the upload folder's path, not known before connecting


def plan_upload(job, cluster_name: str) -> Upload:
    """Which of the job's paths are this machine's files: a small file is sent, anything
    larger (or a folder) must already be on the cluster, under the path the job gives."""
    from ftcore.files import expand
    from ftcore.schema import WRITTEN_PATHS, job_to_dict

    config = job_to_dict(job)
    files: dict[str, Path] = {}
    sent, problems = [], []
    named = dict(job.local_paths)
    if job.slurm.template:
        named["slurm.template"] = str(job.slurm.template)
    for key, value in named.items():
        if key in WRITTEN_PATHS:
            continue
        try:
            here = expand(value)
        except UserError:
            continue  # not a path here (a variable of the cluster's): the cluster's ft checks it
        if not here.exists():
            continue  # a path on the cluster: its ft checks it there
        if here.is_dir() or here.stat().st_size > SEND_LIMIT_BYTES:
            what = "a folder" if here.is_dir() else f"{here.stat().st_size / 2**20:.0f} MiB"
            problems.append(f"{key} {value} is on this machine ({what}): copy it to the cluster yourself, e.g. "
                            f"`rsync -a {shlex.quote(str(here))} {cluster_name}:PATH`, and name it by its path there: "
                            f"{key}=PATH")
            continue
        name = f"files/{key}-{here.name}"
        files[name] = here
        _set(config, key, f"{UPLOAD_MARK}/{name}")
        sent.append(f"{key}: {value} → sent with the job")
    if problems:
        raise UserError(*problems)
    return Upload(config, files, tuple(sent))


def _set(config: dict, dotted: str, value: str) -> None:
    """`data.path` or one source of a mixture, `data.path[1]` (a file or a {path: ...} item)."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    name, _, index = leaf.partition("[")
    if not index:
        node[leaf] = value
        return
    items, position = node[name], int(index.rstrip("]"))
    if isinstance(items[position], dict):
        items[position]["path"] = value
    else:
        items[position] = value


def _fill(value: Any, folder: str) -> Any:
    if isinstance(value, str):
        return value.replace(UPLOAD_MARK, folder)
    if isinstance(value, dict):
        return {k: _fill(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, folder) for v in value]
    return value


def upload_folder(c: Cluster, job_name: str) -> PurePosixPath:
    """A new folder for this submission's files under the cluster's FT_HOME; its absolute path."""
    from launcher import jobdir

    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{jobdir.safe_name(job_name)}-{random.token_hex(3)}"
    script = 'd="${FT_HOME:-$HOME/ft}/uploads/$1" && mkdir -p -- "$d" && cd -- "$d" && pwd -P'
    result = run(c, ["sh", "-c", script, "sh", name], capture=True)
    lines = result.stdout.decode(errors="replace").strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("/"):
        raise UserError(f"cluster {c.name}: could not make a folder for the job's files there")
    return PurePosixPath(lines[-1])


def send(c: Cluster, upload: Upload, job_name: str) -> tuple[PurePosixPath, PurePosixPath]:
    """Send the resolved job and its files; (the factory to submit there, an empty profile:
    the job was resolved here against the cluster's profile already)."""
    import yaml

    folder = upload_folder(c, job_name)
    config = _fill(upload.config, str(folder))
    texts = {"job.yaml": yaml.safe_dump(config, sort_keys=False), "profile.yaml": "{}\n"}
    for name, path in upload.files.items():
        try:
            texts[name] = path.read_text()
        except UnicodeDecodeError:
            raise UserError(f"{path}: only text files are sent to the cluster; copy it there yourself") from None
    RemoteFiles(c, folder).write(texts)
    return folder / "job.yaml", folder / "profile.yaml"


def submit_words(factory: PurePosixPath, profile: PurePosixPath, sweeps: list[str], after: str | None,
                 stage: bool, force: bool, skip_image_check: bool) -> list[str]:
    words = ["submit", "--factory", str(factory), "--profile", str(profile), "--yes"]
    for sweep in sweeps:
        words += ["--sweep", sweep]
    if after:
        words += ["--after", after]
    words += ["--stage"] * stage + ["--force"] * force + ["--skip-image-check"] * skip_image_check
    return words


# --------------------------------------------------------------------------- plot


def plot(c: Cluster, specs: list[str], out: Path | None) -> Path:
    """`ft plot --cluster`: the cluster's ft names the runs; only their metrics.jsonl come here."""
    import json

    from launcher import plot as plotting

    listed = ft(c, ["plot", "--list-runs", *specs], capture=True)
    if listed.returncode != 0:
        raise UserError(f"cluster {c.name}: ft plot could not find {' '.join(specs)} there")
    try:
        described = json.loads(listed.stdout.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise UserError(f"cluster {c.name}: could not read ft's answer", listed.stdout.decode(errors="replace")[-400:]) from None
    runs = []
    for item in described:
        files = RemoteFiles(c, PurePosixPath(item["folder"]))
        run = plotting.Run(item["label"], Path(item["folder"]), job=item["job"])
        try:
            run.series = plotting.parse_metrics(files.read_bytes(layout.METRICS))
        except OSError:
            run.series = {}
        runs.append(run)
    plotting.check_series(runs)
    name = "-".join(dict.fromkeys(r.job.split(" ")[0] for r in runs))[:80]
    return plotting.draw(runs, out or Path(f"ft-plot-{c.name}-{name}.png"))
