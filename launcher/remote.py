"""`--cluster NAME`: ft on a laptop, the job on a cluster, over the user's own OpenSSH.

    ft submit --cluster NAME --factory my.yaml lora.rank=16   # checked here, submitted there
    ft jobs --cluster NAME ; ft logs --cluster NAME 4242 -f ; ft plot --cluster NAME 4242

The login node runs ft itself (`clusters.NAME.ft`, default `ft`): every command is one
`ssh NAME -- ft ...` that the cluster's ft answers with its own scheduler and folders, so
states, logs and cancels mean there exactly what they mean on the login node. The laptop
resolves and validates the job before any connection, sends the resolved config and the
small files the job names, and reads back only what it shows (`ft plot`: the metrics it
draws, through RemoteFiles).

SSH: OpenSSH's `ssh` only, BatchMode=yes (never a prompt), the user's ~/.ssh/config as it is
(so a configured ControlMaster/ControlPath connection is reused: one login, many commands).
Every word sent is shlex-quoted, NAME, host and user are checked against option and shell
injection, and `--` ends ssh's options. Nothing of this machine's environment travels: no
variable is forwarded and no secret's value may appear in a command line or a file sent.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Iterable, Iterator

from ftcore import layout, secrets
from ftcore.errors import UserError
from launcher import paths

# A cluster name, host alias or host name: no leading dash (an ssh option), no space, quote,
# newline or shell character. User names likewise.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
# A file the job names on this machine is sent when it is at most this large; a larger one
# (or a folder) is the user's to copy, and the job names it by its path on the cluster.
SEND_LIMIT_BYTES = 64 * 2**20
CONNECT_TIMEOUT_S = 20
# A command that answers (all but `ft logs -f`) ends within clusters.NAME.timeout seconds, else
# ft stops it there; a submit (it may pull an image first) within at least SUBMIT_TIMEOUT_S.
ANSWER_TIMEOUT_S = 300
SUBMIT_TIMEOUT_S = 3600
STOP_TIMEOUT_S = 15
# The most ft reads of an answer it parses: a list of runs, or the metrics it plots.
ANSWER_LIMIT_BYTES = 4 * 2**20
METRICS_LIMIT_BYTES = 64 * 2**20
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
    timeout: float = ANSWER_TIMEOUT_S  # seconds a command that answers may take there

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
    known = ("host", "user", "port", "ft", "ft_home", "profile", "timeout")
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
    words = _command_words(entry.get("ft", "ft"))
    if not words:
        problems.append(f"clusters.{name}.ft must be the command that runs ft on the login node, e.g. "
                        "`ft` or `/opt/ft/venv/bin/ft` (words as a shell reads them, quotes closed)")
    timeout = entry.get("timeout", ANSWER_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
        problems.append(f"clusters.{name}.timeout must be the seconds a command may take there (1 to 86400)")
    for key in ("ft_home", "profile"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not value or "\n" in value or "\0" in value):
            problems.append(f"clusters.{name}.{key} must be a path")
    if problems:
        raise UserError(*problems)
    profile = expand(entry["profile"]) if entry.get("profile") else None
    return Cluster(name, host, entry.get("user"), port, tuple(words or ()), entry.get("ft_home"), profile,
                   float(timeout))


def _command_words(command: object) -> list[str] | None:
    """`clusters.NAME.ft` split as a shell would; None for what is not a command line."""
    if not isinstance(command, str) or "\0" in command:
        return None
    try:
        return shlex.split(command)
    except ValueError:  # an unclosed quote
        return None


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
    env = ["env", f"{paths.HOME_ENV}={c.ft_home}"] if c.ft_home else []
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
    said = printable(said.strip())
    last = said.splitlines()[-1][-300:] if said else "(nothing)"
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
                         f"(it said: {printable(said.strip().splitlines()[-1])[-300:]})",
                         hint="install ft on the login node (`pip install --user ft-launch`, or a module) and "
                              f"name its command in ft's config: clusters.{c.name}.ft")
    return None


# What the cluster prints reaches this terminal as text only: a control character (an escape
# sequence that sets the clipboard, the title or clears the screen) is shown, not obeyed.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character but tab, newline and carriage return written as ^X."""
    return _CONTROL.sub(lambda m: f"^{chr(ord(m.group()) ^ 0x40)}" if ord(m.group()) < 0x80
                        else f"<{ord(m.group()):#x}>", text)


class NoAnswer(UserError):
    """The cluster's command did not end in time: ft stopped it (said in the message)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C here while a command ran there; `stopped` says what became of that command."""

    def __init__(self, stopped: str):
        super().__init__(stopped)
        self.stopped = stopped


@dataclass(frozen=True)
class Answer:
    status: int  # the remote command's exit status (ssh's own 255, or < 0 when ssh itself died)
    out: bytes  # its stdout, when captured
    shown: str  # the last lines of its stdout, when streamed to ours
    said: str  # the last lines it wrote on stderr


class _Call:
    """One command on the login node: ssh started, its three pipes served by threads.

    The remote shell announces itself on stderr with its process id (a process group: sshd
    starts it with setsid) before it execs the command: what ssh printed before that line is
    ssh's own, and the id lets ft stop the command there when this side gives up on it."""

    CHUNK = 1 << 16

    def __init__(self, c: Cluster, words: list[str], input: bytes | None, capture: int | None):
        self.cluster = c
        self.capture = capture  # None: stream stdout to ours; else the most bytes kept
        self.input = input
        command = f"echo {_MARK} $$ >&2; exec " + remote_command(c, words)
        stdin = subprocess.DEVNULL if input is None else subprocess.PIPE
        self.proc = subprocess.Popen(ssh_argv(c, command), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.connected = threading.Event()
        self.remote_pid: int | None = None
        self.before = bytearray()  # ssh's own words (their last 64 KiB)
        self.after: list[str] = []  # the last lines the remote command wrote on stderr
        self.out = bytearray()
        self.shown = ""
        self.too_large = False
        self.threads = [threading.Thread(target=self._relay_stderr, daemon=True),
                        threading.Thread(target=self._read_stdout, daemon=True)]
        if input is not None:
            self.threads.append(threading.Thread(target=self._feed, daemon=True))
        for thread in self.threads:
            thread.start()

    def _chunks(self, pipe) -> Iterator[bytes]:
        while chunk := os.read(pipe.fileno(), self.CHUNK):
            yield chunk

    def _relay_stderr(self) -> None:
        """ssh's own words up to the mark, kept; the remote command's after it, shown."""
        assert self.proc.stderr is not None
        pending = b""
        chunks = self._chunks(self.proc.stderr)
        for chunk in chunks:
            pending += chunk
            while b"\n" in pending and not self.connected.is_set():
                line, pending = pending.split(b"\n", 1)
                self._before_mark(line)
            if self.connected.is_set():
                break
            if len(pending) > self.CHUNK:  # no line end in sight: not the mark
                self.before[:] = (self.before + pending)[-self.CHUNK:]
                pending = b""
        if not self.connected.is_set():
            self.before[:] = (self.before + pending)[-self.CHUNK:]
            return
        text = _Text(sys.stderr, keep=4096)
        text.write(pending)
        for chunk in chunks:
            text.write(chunk)
        text.flush()
        self.after = text.kept.splitlines()[-20:]

    def _before_mark(self, line: bytes) -> None:
        words = line.strip().split()
        if words[:1] == [_MARK.encode()]:
            if len(words) == 2 and words[1].isdigit() and len(words[1]) < 10:
                self.remote_pid = int(words[1])
            self.connected.set()
        else:
            self.before[:] = (self.before + line + b"\n")[-self.CHUNK:]

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        if self.capture is None:
            text = _Text(sys.stdout, keep=4096)
            for chunk in self._chunks(self.proc.stdout):
                text.write(chunk)
            text.flush()
            self.shown = text.kept
            return
        for chunk in self._chunks(self.proc.stdout):
            if len(self.out) + len(chunk) > self.capture:
                self.too_large = True
                self.proc.kill()
                return
            self.out += chunk

    def _feed(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(self.input or b"")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def wait(self, timeout: float | None) -> int:
        """ssh's exit status. On a timeout or Ctrl-C, the command is stopped there too."""
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stopped = self.stop()
            raise NoAnswer(f"cluster {self.cluster.name}: no answer within {timeout:.0f} s; {stopped}",
                           hint=f"a slow login node: raise clusters.{self.cluster.name}.timeout in ft's "
                                "config") from None
        except KeyboardInterrupt:
            raise Interrupted(self.stop()) from None
        # The end is ssh's exit, not the pipes' end of file: a master connection that ssh
        # leaves running (ControlPersist) may hold them open.
        for thread in self.threads:
            thread.join(timeout=2)
        return status

    def stop(self) -> str:
        """End ssh here and the command's process group there; what became of it, in words."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.remote_pid is None:
            return "nothing had started there"
        return _kill_remote(self.cluster, self.remote_pid)


class _Text:
    """Bytes from the cluster written to one of our streams as printable text; the last
    `keep` characters kept (what the caller reads back), so memory stays bounded."""

    def __init__(self, stream, keep: int):
        import codecs

        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.keep = keep
        self.kept = ""
        self.closed = False

    def write(self, chunk: bytes, final: bool = False) -> None:
        text = printable(self.decoder.decode(chunk, final))
        if not text:
            return
        self.kept = (self.kept + text)[-self.keep:]
        if self.closed:
            return
        try:
            self.stream.flush()
            buffer = getattr(self.stream, "buffer", None)
            if buffer is not None:
                buffer.write(text.encode(errors="replace"))
                buffer.flush()
            else:
                self.stream.write(text)
                self.stream.flush()
        except (BrokenPipeError, OSError):  # `ft jobs --cluster X | head`: the reader left
            self.closed = True

    def flush(self) -> None:
        self.write(b"", final=True)


def _kill_remote(c: Cluster, pid: int) -> str:
    """Stop the command (its process group) that ft started on the login node."""
    # Stopped, or already ended (a command killed by its closed pipe): either way, gone.
    script = 'kill -s TERM -- "-$1" 2>/dev/null || ! kill -s 0 -- "-$1" 2>/dev/null'  # POSIX (dash) spelling
    argv = ssh_argv(c, shlex.join(["sh", "-c", script, "sh", str(pid)]))
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=STOP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is not None and done.returncode == 0:
        return "ft stopped the command it had started there"
    return f"ft could not stop the command it had started there: `ssh {c.ssh_line} kill -- -{pid}` does"


def run(c: Cluster, words: list[str], input: bytes | None = None, capture: int | None = None,
        timeout: float | None = None) -> Answer:
    """`words` run on the login node, for at most `timeout` seconds. Its stdout streams to
    ours as printable text, or with `capture` at most that many bytes of it come back; its
    stderr streams to ours once the connection is up. A refused login raises one UserError
    that says what to do; nothing ever waits at a prompt."""
    call = _Call(c, words, input, capture)
    status = call.wait(timeout)
    if call.too_large:
        stopped = call.stop()
        raise UserError(f"cluster {c.name}: the answer to `{printable(shlex.join(words))[:200]}` is larger than "
                        f"{capture / 2**20:.0f} MiB; ft read no more ({stopped})")
    if not call.connected.is_set():
        raise _connection_error(c, call.before.decode(errors="replace"))
    said = "\n".join(call.after)
    problem = _not_installed(c, status, said)
    if problem:
        raise problem
    return Answer(status, bytes(call.out), call.shown, said)


def ft(c: Cluster, args: list[str], capture: int | None = None, input: bytes | None = None,
       timeout: float | None = None) -> Answer:
    """The cluster's ft with `args` (each a word: a job id, a path, an option)."""
    return run(c, [*c.ft, *args], capture=capture, input=input, timeout=timeout)


def ft_passthrough(c: Cluster, args: list[str], follow: bool = False) -> int:
    """Run the cluster's ft and hand back its exit status (its output is already ours, as text).
    A command that answers has clusters.NAME.timeout seconds; one that follows (`logs -f`) has
    no end but Ctrl-C."""
    sys.stdout.flush()
    answer = ft(c, args, timeout=None if follow else c.timeout)
    if _lost(answer):
        raise UserError(f"cluster {c.name}: the connection to {c.host} was lost before `ft {args[0]}` there ended")
    return answer.status


SSH_FAILED = 255  # ssh's own exit status for a connection that failed or broke


def _lost(answer: Answer) -> bool:
    return answer.status < 0 or answer.status == SSH_FAILED


def submit(c: Cluster, args: list[str], sent: PurePosixPath | None = None) -> int:
    """The cluster's `ft submit` (or `resubmit`), its output ours. A broken connection, a
    timeout or Ctrl-C before its answer leaves a job that may exist there: ft says so, and how
    to find it, as a local submit that sbatch did not answer does."""
    sys.stdout.flush()
    try:
        answer = ft(c, args, timeout=max(c.timeout, SUBMIT_TIMEOUT_S))
    except Interrupted as interrupted:
        raise _unclear(c, sent, f"interrupted while the cluster's ft was submitting ({interrupted.stopped})") from None
    except NoAnswer as err:
        raise _unclear(c, sent, err.problems[0].removeprefix(f"cluster {c.name}: ")) from None
    if _lost(answer):
        when = ("after the cluster's ft said it submitted the job (above)" if "Submitted batch job" in answer.shown
                else "while the cluster's ft was submitting")
        raise _unclear(c, sent, f"the connection to {c.host} was lost {when}")
    return answer.status


def _unclear(c: Cluster, sent: PurePosixPath | None, what: str) -> UserError:
    where = f"; the files sent with it are in {sent} there" if sent else ""
    return UserError(f"cluster {c.name}: {what}: the job may have been submitted there{where}",
                     hint=f"look for it with `ft jobs --cluster {c.name}` (or `ssh {c.ssh_line} squeue --me`); "
                          "if it is not there, submit it again")


# --------------------------------------------------------------------------- the folder over ssh


class RemoteFiles:
    """A folder on the cluster, over the same ssh: `ft plot --cluster` reads each run's metrics
    back, `ft submit --cluster` writes the job's files. One ssh call per read or write; every
    other command over ssh is the cluster's own ft."""

    def __init__(self, c: Cluster, root: PurePosixPath):
        self.cluster = c
        self.root = PurePosixPath(root)

    def _path(self, name: str | PurePath) -> str:
        path = self.root / PurePosixPath(str(name))
        if ".." in path.parts:
            raise UserError(f"{name}: not inside the job folder")
        return str(path)

    def _read(self, words: list[str], limit: int) -> bytes:
        answer = run(self.cluster, words, capture=limit, timeout=self.cluster.timeout)
        if answer.status != 0:
            raise FileNotFoundError(words[-1])
        return answer.out

    def tail(self, name: str | PurePath, size: int) -> bytes:
        """The last `size` bytes of a file in the folder (a metrics file may be large and growing)."""
        return self._read(["tail", "-c", str(size), "--", self._path(name)], size)

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
                info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        self._send(buffer.getvalue())

    def _send(self, tar: bytes) -> None:
        """Unpacked as private as a job folder: folders 700, files 600 (umask 077 there)."""
        root = str(self.root)
        script = 'umask 077 && mkdir -p -- "$1" && tar -x --no-same-permissions -f - -C "$1"'
        answer = run(self.cluster, ["sh", "-c", script, "sh", root], input=tar, capture=ANSWER_LIMIT_BYTES,
                     timeout=self.cluster.timeout)
        if answer.status != 0:
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
    """A new folder for this submission's files under the cluster's FT_HOME (700, as a job
    folder: it holds the user's data); its absolute path."""
    from launcher import jobdir

    script = (f'umask 077 && d="{paths.shell_home()}/uploads" && mkdir -p -- "$d" && chmod 700 -- "$d" '
              '&& mkdir -- "$d/$1" && cd -- "$d/$1" && pwd -P')
    answer = run(c, ["sh", "-c", script, "sh", jobdir.new_name(job_name)], capture=ANSWER_LIMIT_BYTES,
                 timeout=c.timeout)
    lines = answer.out.decode(errors="replace").strip().splitlines()
    if answer.status != 0 or not lines or not lines[-1].startswith("/") or _CONTROL.search(lines[-1]):
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
    """`ft plot --cluster`: the cluster's ft names the runs; only their metrics.jsonl come here.
    The PNG goes to `out`, else to this folder, under a name made of the jobs' safe characters."""
    from launcher import jobdir
    from launcher import plot as plotting

    listed = ft(c, ["plot", "--list-runs", *specs], capture=ANSWER_LIMIT_BYTES, timeout=c.timeout)
    if listed.status != 0:
        raise UserError(f"cluster {c.name}: ft plot could not find {' '.join(specs)} there")
    runs = []
    for item in _described_runs(c, listed.out):
        files = RemoteFiles(c, PurePosixPath(item["folder"]))
        run = plotting.Run(printable(item["label"]), Path(item["folder"]), job=printable(item["job"]))
        try:
            run.series = plotting.parse_metrics(files.tail(layout.METRICS, METRICS_LIMIT_BYTES))
        except OSError:
            run.series = {}
        runs.append(run)
    plotting.check_series(runs)
    name = "-".join(dict.fromkeys(jobdir.safe_name(r.job.split(" ")[0]) for r in runs))[:80]
    return plotting.draw(runs, out or Path(f"ft-plot-{c.name}-{name}.png"))


_RUN_FIELDS = ("label", "folder", "job")


def _described_runs(c: Cluster, out: bytes) -> list[dict[str, str]]:
    """The runs in the cluster's answer: a JSON list of {label, folder, job}, each a short
    string, the folder an absolute path there; anything else is one error, never a traceback."""
    import json

    text = out.decode(errors="replace").strip()
    try:
        described = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError, RecursionError):
        described = None
    if not isinstance(described, list) or not 0 < len(described) <= 1000 or not all(
            isinstance(item, dict) and all(isinstance(item.get(k), str) and 0 < len(item[k]) <= 4096
                                           and "\0" not in item[k] for k in _RUN_FIELDS) for item in described):
        raise UserError(f"cluster {c.name}: could not read ft's answer to `ft plot --list-runs` (a JSON list of "
                        f"runs, each with {', '.join(_RUN_FIELDS)}); it began: {printable(text[:200])!r}",
                        hint=f"check that clusters.{c.name}.ft runs ft on {c.host} (with `--version` there)")
    for item in described:
        if not item["folder"].startswith("/") or _CONTROL.search(item["folder"]):
            raise UserError(f"cluster {c.name}: ft there named a run folder that is not a plain absolute path: "
                            f"{printable(item['folder'][:200])!r}")
    return described
