"""STAND-IN for Pyxis (NVIDIA's SPANK plugin for SLURM) and enroot -- NOT the real tools.

Why it exists: Pyxis is a plugin that SLURM's own srun and slurmstepd load (plugstack.conf),
built against the exact SLURM release, with enroot behind it; neither has a Debian package, the
local test cluster's srun has no SPANK plugin, and no registry can be reached. So that ft's
Pyxis scripts run end to end on the local SLURM cluster, tests put tests/standin/pyxis/ at the
front of PATH (never globally): its `srun` and `enroot` are this module.

How it takes Pyxis's place (the choice, and why): SPANK adds `--container-*` options to srun
itself. Here `srun` is a wrapper first on PATH: it reads srun's own option table from the real
srun's `--help` (so it finds where the command starts as srun does), takes the Pyxis options out,
checks them with Pyxis's rules (args.c: the same option names, arguments, conflicts and messages),
and execs the real srun with each task's command wrapped in `pyxis_standin.py task SPEC -- CMD`,
which does on the node what Pyxis's slurmstepd half does. An option that starts `--container-`
or `--no-container-` and is not Pyxis's is refused as srun refuses an unknown option. The real
srun does the rest (allocation, steps, signals, exit codes).

What a task sees, as with Pyxis + enroot's default configuration:
* the image: `--container-image` a squashfs file (a path from `/` or `.`, made by mksquashfs,
  Debian's squashfs-tools, as `enroot import` makes it) or an enroot URI
  (`[USER@][REGISTRY#]IMAGE[:TAG]`, also `docker://...`) imported from the stand-in registry. A
  missing or unrecognised image fails the task with Pyxis's words. The squashfs is extracted with
  unsquashfs once per file (kept under $FT_STANDIN_ENROOT_DATA/images: what Pyxis's direct
  squashfs start mounts) and is the read-only root filesystem (`--container-writable`: a
  private copy of it, for that task);
* enroot's mounts (conf/mounts/10-system.fstab, 20-config.fstab): /proc, /sys, /dev, /dev/shm,
  a fresh tmpfs on /tmp, /var/run and /var/lock, /etc/hosts, /etc/hostname, /etc/resolv.conf;
  the user's home only with `--container-mount-home` (enroot's ENROOT_MOUNT_HOME defaults to
  no); then each `--container-mounts` entry in order (`SRC[:DST[:FLAGS]]`, flags joined by `+`,
  a source that does not exist refused as Pyxis refuses it);
* the environment: the job's, with the image's /etc/environment winning, except the names in
  `--container-env`, whose host values win (Pyxis's rule); PATH is the image's;
* the working directory: `--container-workdir`, else the image's WORKDIR (the `cd` in its
  /etc/rc), else /;
* `--container-unshare net,ipc,uts`: new namespaces (bubblewrap's --unshare-*);
  `--container-save` is refused as not implemented by the stand-in;
* `--container-name NAME[:FLAG]`: a named container (pyxis_NAME, Pyxis's default global scope,
  one per node) is kept after the task and reused by later steps, the import skipped, whatever
  image is named then; unnamed ones are gone when the task ends.
The command runs under bubblewrap (bwrap) in that root: nothing of the host is visible but what
the mounts show. Signals the task gets are forwarded to it; its exit status is the task's.

`enroot` here: `import [-a ARCH] [-o OUT] URI` writes a squashfs from the stand-in registry
(written in place, as enroot's mksquashfs does: an interrupted import leaves a partial file),
`start [-m FSTAB] [-e KEY[=VAL]] [-w] IMAGE.sqsh [CMD...]` runs a command in a squashfs image
(`ft image check` uses it), `version`. Anything else is refused as unsupported by the stand-in.

The stand-in registry ($FT_STANDIN_REGISTRY, the same folder the Apptainer stand-in reads):
an image `REGISTRY#IMAGE:TAG` is `REGISTRY/IMAGE/TAG.sqsh` (a squashfs, copied) or
`REGISTRY/IMAGE/TAG` (a root filesystem folder, squashed); a Docker Hub image has no REGISTRY
part. Unset, every registry is unreachable. Each invocation appends one JSON line to
$FT_STANDIN_LOG when set (tool "pyxis" or "enroot": argv, options, image, root, mounts, env, cwd).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REGISTRY_ENV = "FT_STANDIN_REGISTRY"
DATA_ENV = "FT_STANDIN_ENROOT_DATA"
SQUASHFS_MAGIC = b"hsqs"
VERSION = "3.5.0 (ft stand-in)"

# Pyxis's options (args.c spank_opts): name → takes an argument.
PYXIS_OPTIONS = {
    "container-image": True,
    "container-mounts": True,
    "container-workdir": True,
    "container-name": True,
    "container-save": True,
    "container-mount-home": False,
    "no-container-mount-home": False,
    "container-remap-root": False,
    "no-container-remap-root": False,
    "container-entrypoint": False,
    "no-container-entrypoint": False,
    "container-entrypoint-log": False,
    "container-writable": False,
    "container-readonly": False,
    "container-env": True,
    "container-unshare": True,
}
# The environment variables Pyxis reads when the option is not given (args.c).
PYXIS_ENV = {
    "PYXIS_CONTAINER_IMAGE": "container-image", "PYXIS_CONTAINER_MOUNTS": "container-mounts",
    "PYXIS_CONTAINER_WORKDIR": "container-workdir", "PYXIS_CONTAINER_NAME": "container-name",
    "PYXIS_CONTAINER_SAVE": "container-save", "PYXIS_CONTAINER_ENV": "container-env",
}
# Mount flags the stand-in applies or accepts as no-ops for a bind (mount(8) words).
MOUNT_FLAGS = {"ro", "rw", "bind", "rbind", "private", "rprivate", "slave", "rslave", "shared", "rshared",
               "nosuid", "nodev", "noexec", "x-create=dir", "x-create=file", "x-create=auto"}
# enroot's conf/mounts/20-config.fstab (files bound read-only when the host has them).
CONFIG_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
             signal.SIGQUIT, signal.SIGALRM, signal.SIGCONT, signal.SIGWINCH)


class Refused(Exception):
    """An error the real tool reports; `code` is its exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def log(record: dict) -> None:
    path = os.environ.get("FT_STANDIN_LOG")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())  # one write: lines never interleave
    finally:
        os.close(fd)


def _record(tool: str, argv: list[str]) -> dict:
    return {"tool": tool, "argv": argv, "cwd": os.getcwd(), "time": time.time(), "pid": os.getpid(),
            "host": socket.gethostname(),
            "slurm": {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID", "SLURMD_NODENAME")
                      if k in os.environ}}


# ---------------------------------------------------------------- srun: the client side

def real_srun() -> str:
    """The next `srun` on PATH after this folder: SLURM's own."""
    wrapper = os.path.realpath(os.path.join(HERE, "srun"))
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder or ".", "srun")
        if os.access(candidate, os.X_OK) and os.path.realpath(candidate) != wrapper:
            return candidate
    raise Refused("srun: command not found (the stand-in wraps SLURM's srun, which is not on PATH)", 127)


_HELP_LINE = re.compile(r"^\s+(?:-(\w), )?--([A-Za-z][\w-]*)(\[?=)?")


def srun_arity(srun: str) -> tuple[dict[str, str], dict[str, str]]:
    """srun's own options from its --help: long name / short letter → "none", "required", "optional"."""
    text = subprocess.run([srun, "--help"], capture_output=True, text=True, timeout=30).stdout
    longs, shorts = {}, {}
    for line in text.splitlines():
        match = _HELP_LINE.match(line)
        if not match:
            continue
        short, name, arg = match.groups()
        kind = "optional" if arg == "[=" else "required" if arg == "=" else "none"
        longs[name] = kind
        if short:
            shorts[short] = kind
    return longs, shorts


def split_srun(argv: list[str], longs: dict[str, str], shorts: dict[str, str]) -> tuple[list[str], list[tuple[str, str | None]], list[str]]:
    """(srun's own words, the Pyxis options in order, the command): srun stops at its first
    non-option word (or `--`), as getopt does for srun."""
    own, pyxis = [], []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return own, pyxis, argv[i + 1:]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if name.startswith(("container-", "no-container-")):
                if name not in PYXIS_OPTIONS:
                    raise Refused(f"srun: unrecognized option '--{name}'\nTry \"srun --help\" for more information")
                if PYXIS_OPTIONS[name]:
                    if not eq:
                        if i + 1 >= len(argv):
                            raise Refused(f"srun: option '--{name}' requires an argument\n"
                                          "Try \"srun --help\" for more information")
                        i += 1
                        value = argv[i]
                    pyxis.append((name, value))
                elif eq:
                    raise Refused(f"srun: option '--{name}' doesn't allow an argument\n"
                                  "Try \"srun --help\" for more information")
                else:
                    pyxis.append((name, None))
                i += 1
                continue
            own.append(word)
            if longs.get(name) == "required" and not eq:
                i += 1
                if i < len(argv):
                    own.append(argv[i])
            i += 1
            continue
        if word.startswith("-") and len(word) > 1:
            own.append(word)
            for n, letter in enumerate(word[1:]):
                if shorts.get(letter) == "required":
                    if n == len(word) - 2:  # the value is the next word
                        i += 1
                        if i < len(argv):
                            own.append(argv[i])
                    break
            i += 1
            continue
        return own, pyxis, argv[i:]
    return own, pyxis, []


def parse_pyxis(given: list[tuple[str, str | None]], environ: dict) -> dict:
    """Pyxis's arguments (args.c), its refusals in its words."""
    spec = {"image": None, "mounts": [], "workdir": None, "name": None, "name_flag": None, "save": None,
            "mount_home": None, "remap_root": None, "entrypoint": None, "entrypoint_log": None,
            "writable": None, "env": [], "unshare": []}

    def once(key: str, option: str, value: str) -> None:
        if not value:
            raise Refused(f"pyxis: --{option}: argument required")
        if spec[key] is not None and spec[key] != value:
            raise Refused(f"pyxis: --{option} specified multiple times")
        spec[key] = value

    def pair(key: str, value: bool, both: str) -> None:
        if spec[key] is not None and spec[key] != value:
            raise Refused(f"pyxis: both {both} were specified")
        spec[key] = value

    def apply(option: str, value: str | None) -> None:
        if option == "container-image":
            once("image", option, value)
        elif option == "container-mounts":
            if not value:
                raise Refused("pyxis: --container-mounts: argument required")
            for entry in value.split(","):
                spec["mounts"].append(_mount_entry(entry))
        elif option == "container-workdir":
            once("workdir", option, value)
        elif option == "container-name":
            if not value:
                raise Refused("pyxis: --container-name: argument required")
            name, _, flag = value.partition(":")
            if not name:
                raise Refused("pyxis: --container-name: empty name")
            if (flag or "auto") not in ("auto", "create", "exec", "no_exec"):
                raise Refused('pyxis: --container-name: flag must be "auto", "create", "exec" or "no_exec"')
            if spec["name"] is not None and (spec["name"], spec["name_flag"]) != (name, flag or "auto"):
                raise Refused("pyxis: --container-name specified multiple times")
            spec["name"], spec["name_flag"] = name, flag or "auto"
        elif option == "container-save":
            if value and value.endswith("/"):
                raise Refused("pyxis: --container-save: target is a directory")
            once("save", option, value)
        elif option in ("container-mount-home", "no-container-mount-home"):
            pair("mount_home", not option.startswith("no-"), "--container-mount-home and --no-container-mount-home")
        elif option in ("container-remap-root", "no-container-remap-root"):
            pair("remap_root", not option.startswith("no-"), "--container-remap-root and --no-container-remap-root")
        elif option in ("container-entrypoint", "no-container-entrypoint"):
            pair("entrypoint", not option.startswith("no-"), "--container-entrypoint and --no-container-entrypoint")
        elif option == "container-entrypoint-log":
            spec["entrypoint_log"] = True
        elif option in ("container-writable", "container-readonly"):
            pair("writable", option == "container-writable", "--container-writable and --container-readonly")
        elif option == "container-env":
            if not value:
                raise Refused("pyxis: --container-env: argument required")
            for name in value.split(","):
                if not name:
                    raise Refused(f"pyxis: --container-env: invalid format: {value}")
                if name not in spec["env"]:
                    spec["env"].append(name)
        elif option == "container-unshare":
            for namespace in (value or "").split(","):
                if namespace not in ("net", "ipc", "uts"):
                    raise Refused(f"pyxis: --container-unshare: unknown namespace '{namespace}'"
                                  if namespace else "pyxis: --container-unshare: empty namespace argument")
                spec["unshare"].append(namespace)

    for option, value in given:
        apply(option, value)
    for variable, option in PYXIS_ENV.items():  # defaults from the environment, as Pyxis reads them
        key = {"container-image": "image", "container-mounts": "mounts", "container-workdir": "workdir",
               "container-name": "name", "container-save": "save", "container-env": "env"}[option]
        if variable in environ and not spec[key]:
            apply(option, environ[variable])
    return spec


def _mount_entry(entry: str) -> dict:
    """One `SRC[:DST[:FLAGS]]` (args.c parse_mount_option, add_mount)."""
    src, _, rest = entry.partition(":")
    if not src:
        raise Refused(f"pyxis: --container-mounts: invalid format: {entry}")
    dst, _, flags = rest.partition(":") if rest else (src, "", "")
    if rest and not dst:
        raise Refused(f"pyxis: --container-mounts: invalid format: {entry}")
    if not src.startswith(("/", ".")) and src not in ("tmpfs", "umount"):
        raise Refused('pyxis: mount source must be a relative path, an absolute path, "tmpfs" or "umount"\n'
                      f"pyxis: could not add mount entry: {src}:{dst}")
    if not dst.startswith(("/", ".")):
        raise Refused("pyxis: mount target must be a relative path or an absolute path\n"
                      f"pyxis: could not add mount entry: {src}:{dst}")
    return {"src": src, "dst": dst, "flags": [f for f in flags.split("+") if f]}


def srun_main(argv: list[str]) -> None:
    record = _record("pyxis", ["srun", *argv])
    try:
        srun = real_srun()
        longs, shorts = srun_arity(srun)
        own, given, command = split_srun(argv, longs, shorts)
        spec = parse_pyxis(given, dict(os.environ))
    except Refused as err:
        record.update(ok=False, error=str(err))
        log(record)
        sys.stderr.write(f"{err}\n" if str(err).startswith("srun:") else f"srun: error: {err}\n")
        sys.exit(err.code)
    if spec["image"] is None and spec["name"] is None:
        for key, option in (("mounts", "--container-mounts"), ("workdir", "--container-workdir"),
                            ("save", "--container-save"), ("writable", "--container-writable")):
            if spec[key]:
                sys.stderr.write(f"srun: error: pyxis: ignoring {option} because neither --container-image "
                                 "nor --container-name is set\n")
        os.execv(srun, [srun, *argv])  # no container: srun as it is
    if not command:
        os.execv(srun, [srun, *own])  # srun's own "no executable" answer
    record.update(ok=True, spec=spec, command=command)
    log(record)
    task = [sys.executable, os.path.join(HERE, "pyxis_standin.py"), "task", json.dumps(spec), "--"]
    os.execv(srun, [srun, *own, *task, *command])


# ---------------------------------------------------------------- images

def data_dir() -> str:
    return os.environ.get(DATA_ENV) or f"/tmp/ft-standin-enroot-{os.getuid()}"


def is_squashfs(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == SQUASHFS_MAGIC
    except OSError:
        return False


def _identity(sqsh: str) -> str:
    """What tells one squashfs from another, copies of one alike: its superblock (creation time,
    size) and its first and last 64 KiB."""
    digest = hashlib.sha256()
    size = os.path.getsize(sqsh)
    with open(sqsh, "rb") as handle:
        digest.update(handle.read(1 << 16))
        handle.seek(max(0, size - (1 << 16)))
        digest.update(handle.read())
    digest.update(str(size).encode())
    return digest.hexdigest()[:16]


def extracted(sqsh: str) -> str:
    """The root filesystem of a squashfs file, unsquashed once per image (copies of one file
    alike) under a lock; what a direct squashfs start mounts."""
    key = _identity(sqsh)
    folder = os.path.join(data_dir(), "images", key)
    rootfs = os.path.join(folder, "rootfs")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(rootfs):
            partial = f"{rootfs}.partial-{os.getpid()}"
            proc = subprocess.run(["unsquashfs", "-q", "-n", "-d", partial, sqsh], capture_output=True, text=True)
            if proc.returncode != 0:
                shutil.rmtree(partial, ignore_errors=True)
                raise Refused(f"[ERROR] Failed to extract {sqsh}: {proc.stderr.strip()[-500:]}")
            os.rename(partial, rootfs)
    return rootfs


def parse_uri(uri: str) -> tuple[str, str, str]:
    """enroot's `docker://[USER@][REGISTRY#]IMAGE[:TAG]` (and the standard `REGISTRY/IMAGE`):
    (registry or "", image path, tag)."""
    ref = uri.removeprefix("docker://")
    if "#" in ref:
        registry, _, rest = ref.partition("#")
        registry = registry.rpartition("@")[2]
    else:
        first, slash, rest = ref.partition("/")
        host = first.rpartition("@")[2]
        if slash and ("." in host or ":" in host or host == "localhost"):
            registry = host
        else:
            registry, rest = "", ref.rpartition("@")[2] if "@" in first else ref
    rest, _, digest = rest.partition("@")
    image, colon, tag = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "latest")
    if not re.fullmatch(r"[a-z0-9/._-]+", image or "") or not re.fullmatch(r"[A-Za-z0-9._:-]+", tag):
        raise Refused(f"[ERROR] Invalid image reference: {uri}")
    return registry, image, digest.replace(":", "-") if digest else tag


def registry_entry(uri: str) -> str:
    """The stand-in registry's file or folder for `uri`, or enroot's refusal."""
    if uri.startswith(("dockerd://", "podman://")):
        raise Refused(f"[ERROR] Command not found: {'docker' if uri.startswith('dockerd') else 'podman'}")
    registry, image, tag = parse_uri(uri)
    host = registry or "registry-1.docker.io"
    root = os.environ.get(REGISTRY_ENV)
    if not root:
        raise Refused(f"[ERROR] Could not resolve host: {host} (stand-in: ${REGISTRY_ENV} is not set)")
    base = os.path.join(root, *([registry] if registry else []), image, tag)
    for candidate in (base + ".sqsh", base):
        if os.path.exists(candidate):
            return candidate
    raise Refused(f"[ERROR] URL https://{host}/v2/{image}/manifests/{tag} returned error code: 404 Not Found "
                  f"(stand-in registry {root})")


def import_image(uri: str, out: str) -> None:
    """Write the squashfs of `uri` into `out`, in place (enroot's mksquashfs writes there)."""
    entry = registry_entry(uri)
    if os.path.exists(out):
        raise Refused(f"[ERROR] File already exists: {out}")
    sys.stderr.write(f"[INFO] Querying registry for permission grant\n[INFO] Fetching image manifest list\n")
    seconds = float(os.environ.get("FT_STANDIN_PULL_SECONDS") or 0)
    if os.path.isdir(entry):
        proc = subprocess.run(["mksquashfs", entry, out, "-noI", "-noD", "-noF", "-noX", "-no-progress", "-quiet"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise Refused(f"[ERROR] mksquashfs failed: {proc.stderr.strip()[-500:]}")
        time.sleep(seconds)
        return
    with open(entry, "rb") as source, open(out, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
        target.flush()
        time.sleep(seconds)


# ---------------------------------------------------------------- the container

def _image_environment(rootfs: str, host: dict) -> dict:
    """The image's /etc/environment (`KEY=VALUE` lines, `${VAR}` from the host substituted)."""
    env = {}
    try:
        lines = open(os.path.join(rootfs, "etc", "environment"), encoding="utf-8").read().splitlines()
    except OSError:
        return env
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = re.sub(r"\$\{(\w+)\}", lambda m: host.get(m.group(1), ""), value)
    return env


def _image_workdir(rootfs: str) -> str:
    """The image's WORKDIR, from the `cd` that `enroot import` writes into /etc/rc."""
    try:
        text = open(os.path.join(rootfs, "etc", "rc"), encoding="utf-8").read()
    except OSError:
        return "/"
    match = re.search(r'^cd "([^"]*)"', text, re.M)
    return match.group(1) if match and match.group(1) else "/"


def _load_view():
    """The bubblewrap view of the Apptainer stand-in (tests/standin/singularity): image entries
    bound read-only on a tmpfs root, missing mount points made on an underlay."""
    path = os.path.join(os.path.dirname(HERE), "singularity")
    loader = importlib.machinery.SourceFileLoader("ft_singularity_standin", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.View


def container_root(spec: dict, record: dict) -> tuple[str, str | None]:
    """(the root filesystem, a private copy to remove after the task or None)."""
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    named = os.path.join(data_dir(), node, f"pyxis_{spec['name']}") if spec.get("name") else None
    if named and os.path.isdir(named):
        if spec["name_flag"] == "create":
            raise Refused('pyxis: error: "create" flag was passed to --container-name but the container already exists')
        record["reused"] = True
        with open(os.path.join(named, "root")) as handle:
            return handle.read().strip(), None
    if named and spec["name_flag"] == "exec":
        raise Refused('pyxis: error: "exec" flag was passed to --container-name but the container is not running')
    image = spec.get("image")
    if image is None:
        raise Refused(f'pyxis: error: a container with name "pyxis_{spec["name"]}" does not exist, '
                      "and --container-image is not set")
    if image.startswith(("/", ".")):
        if not os.path.exists(image):
            raise Refused(f"[ERROR] No such file or directory: {image}\n"
                          f"pyxis: failed to create container filesystem for image: {image}")
        if not is_squashfs(image):
            raise Refused(f"[ERROR] Invalid image format: {image}\n"
                          f"pyxis: failed to create container filesystem for image: {image}")
        sqsh = image
    else:
        sys.stderr.write(f"pyxis: importing docker image: {image}\n")
        os.makedirs(os.path.join(data_dir(), "imports"), exist_ok=True)
        sqsh = os.path.join(data_dir(), "imports", f"{record['slurm'].get('SLURM_JOB_ID')}.{os.getpid()}.squashfs")
        try:
            import_image(image if image.startswith("docker://") else f"docker://{image}", sqsh)
        except Refused as err:
            raise Refused(f"{err}\npyxis: failed to import docker image: {image}") from None
        sys.stderr.write(f"pyxis: imported docker image: {image}\n")
    rootfs = extracted(sqsh)
    if sqsh != image:
        os.unlink(sqsh)  # Pyxis removes the squashfs it imported once the container exists
    private = None
    if spec.get("writable"):
        private = (named or os.path.join(data_dir(), node, f"pyxis_{os.getpid()}")) + ".rootfs"
        subprocess.run(["cp", "-a", rootfs, private], check=True)
        rootfs = private
    if named:
        os.makedirs(named, exist_ok=True)
        with open(os.path.join(named, "root"), "w") as handle:
            handle.write(rootfs + "\n")
        private = None  # a named container stays
    return rootfs, private


def run_task(spec: dict, command: list[str], record: dict) -> int:
    """Pyxis's slurmstepd half for one task: the container, then the command in it."""
    for mount in spec["mounts"]:
        if mount["src"].startswith("/") and not os.path.exists(mount["src"]):
            raise Refused(f"pyxis: --container-mounts: source path does not exist: {mount['src']}")
        unknown = [f for f in mount["flags"] if f not in MOUNT_FLAGS]
        if unknown:
            raise Refused(f"[ERROR] Invalid mount option: {unknown[0]} ({mount['src']}:{mount['dst']})")
    if spec.get("save"):
        raise Refused("stand-in: --container-save (exporting the container to a squashfs) is not implemented")
    rootfs, private = container_root(spec, record)
    try:
        return _contained(spec, rootfs, command, record)
    finally:
        if private:
            shutil.rmtree(private, ignore_errors=True)


def _contained(spec: dict, rootfs: str, command: list[str], record: dict) -> int:
    view = _load_view()(rootfs)
    view.add("proc", "/proc", kind="proc")
    view.add("/sys", "/sys", "ro")
    view.add("/dev", "/dev", kind="dev")
    for folder in ("/tmp", "/var/run", "/var/lock"):  # /var/run → /run in Debian: mounted where it leads
        view.add("tmpfs", view.resolve(folder) or folder, kind="tmpfs")
    for path in CONFIG_FILES:  # x-create=file: made in the image when it lacks them
        if os.path.exists(path):
            view.add(path, view.resolve(path) or path, "ro")
    host = dict(os.environ)
    home = host.get("HOME") or os.path.expanduser("~")
    if spec.get("mount_home") and os.path.isdir(home):
        view.add(home, home)
    for mount in spec["mounts"]:
        if mount["src"] == "tmpfs":
            view.add("tmpfs", mount["dst"], kind="tmpfs")
            continue
        if mount["src"] == "umount":
            continue
        view.add(os.path.abspath(mount["src"]), os.path.normpath(mount["dst"]), "ro" if "ro" in mount["flags"] else "rw")

    # The task's environment: the job's, the container's own values winning (Pyxis's
    # spank_import_container_env), except the names in --container-env.
    image_env = _image_environment(rootfs, host)
    env = {k: v for k, v in host.items() if k not in ("LANG", "LANGUAGE", "LC_ALL") or k in spec["env"]}
    container = {"PATH": DEFAULT_PATH, "TERM": host.get("TERM", ""), **({"HOME": home} if spec.get("mount_home") else {}),
                 **image_env}
    env.update({key: value for key, value in container.items() if key not in spec["env"]})
    workdir = spec.get("workdir") or _image_workdir(rootfs)
    made = any(m["dst"].startswith(workdir.rstrip("/") + "/") for m in view.mounts)  # a mount point's parent
    if not made and not os.path.isdir(view.host_path(workdir) or "/nonexistent"):
        raise Refused(f"pyxis: couldn't chdir to {workdir}: No such file or directory")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise Refused("stand-in: bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    # The command as slurmstepd execs it: found in the task's PATH, else its execve() error.
    action = ('case "$1" in */*) ;; *) command -v "$1" >/dev/null 2>&1 || '
              '{ echo "slurmstepd: error: execve(): $1: No such file or directory" >&2; exit 2; } ;; esac\n'
              'exec env --default-signal "$@"')
    read_fd, write_fd = os.pipe()
    unshare = [f"--unshare-{namespace}" for namespace in spec.get("unshare", [])]  # --container-unshare
    argv = [bwrap, "--die-with-parent", *unshare, "--info-fd", str(write_fd), *view.bwrap_args(), "--chdir", workdir,
            "--", "/bin/sh", "-c", action, "sh", *command]
    record.update(ok=True, root=rootfs, mounts=view.mounts, pwd=workdir, env=env, command=command)
    log(record)
    return _run_forwarding(argv, env, read_fd, write_fd)


def _run_forwarding(argv: list[str], env: dict, read_fd: int, write_fd: int) -> int:
    """Run bwrap, forwarding the signals this process gets to the contained command."""
    child = {"pid": None, "pending": []}

    def forward(sig, _frame) -> None:
        if child["pid"]:
            try:
                os.kill(child["pid"], sig)
            except ProcessLookupError:
                pass
        else:
            child["pending"].append(sig)

    def ignore_signals() -> None:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_IGN)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    sys.stdout.flush()
    proc = subprocess.Popen(argv, env=env, pass_fds=(write_fd,), preexec_fn=ignore_signals)
    os.close(write_fd)
    info = b""
    while True:
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        info += chunk
        try:
            child["pid"] = json.loads(info)["child-pid"]
            break
        except ValueError:
            continue
    os.close(read_fd)
    for sig in child["pending"]:
        forward(sig, None)
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:
            continue
    return code if code >= 0 else 128 - code


def task_main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    command = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    record = _record("pyxis", ["task", *command])
    record["spec"] = spec
    try:
        sys.exit(run_task(spec, command, record))
    except Refused as err:
        record.update(ok=False, error=str(err))
        log(record)
        for line in str(err).splitlines():
            sys.stderr.write(f"slurmstepd: error: {line}\n" if line.startswith("pyxis:") else f"{line}\n")
        sys.exit(err.code)


# ---------------------------------------------------------------- enroot

def _enroot_options(args: list[str], takes_value: dict[str, str]) -> tuple[dict[str, list[str]], list[str]]:
    """enroot's getopt: `-o X`, `--output X`, `--output=X`; stops at the first other word or `--`."""
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            return found, args[i + 1:]
        if not word.startswith("-") or word == "-":
            break
        name, eq, value = word.partition("=")
        canonical = takes_value.get(name)
        if canonical is None:
            raise Refused(f"[ERROR] Invalid option: {word}")
        if canonical.endswith("!"):  # a flag
            found.setdefault(canonical[:-1], []).append("")
        else:
            if not eq:
                i += 1
                if i >= len(args):
                    raise Refused(f"[ERROR] Option requires an argument: {name}")
                value = args[i]
            found.setdefault(canonical, []).append(value)
        i += 1
    return found, args[i:]


def enroot_main(argv: list[str]) -> None:
    record = _record("enroot", ["enroot", *argv])
    try:
        if argv[:1] == ["version"]:
            print(VERSION)
            return
        if argv[:1] == ["import"]:
            options, rest = _enroot_options(argv[1:], {"-a": "arch", "--arch": "arch", "-o": "output", "--output": "output"})
            if len(rest) != 1:
                raise Refused("Usage: enroot import [options] [--] URI")
            uri = rest[0]
            if not uri.startswith(("docker://", "dockerd://", "podman://")):
                raise Refused(f"[ERROR] Invalid argument: {uri}")
            out = options.get("output", [None])[-1] or re.sub(r"[/:#@]", "+", uri.split("://", 1)[1]) + ".sqsh"
            record.update(ok=True, command=["import"], image=uri, out=os.path.abspath(out))
            log(record)
            import_image(uri, out)
            return
        if argv[:1] == ["start"]:
            options, rest = _enroot_options(argv[1:], {
                "-m": "mount", "--mount": "mount", "-e": "env", "--env": "env", "-w": "rw!", "--rw": "rw!",
                "-r": "root!", "--root": "root!", "-c": "conf", "--conf": "conf", "--rc": "rc"})
            if not rest:
                raise Refused("Usage: enroot start [options] [--] NAME|IMAGE [COMMAND] [ARG...]")
            image, command = rest[0], rest[1:] or ["/bin/sh"]
            if not (os.path.isfile(image) and is_squashfs(image)):
                raise Refused(f"[ERROR] No such file or directory: {image}" if not os.path.exists(image) else
                              f"[ERROR] Invalid image format: {image} (the stand-in starts squashfs files)")
            mounts = []
            for fstab in options.get("mount", []):
                fields = fstab.split(":")
                flags = fields[3].split(",") if len(fields) > 3 else []
                mounts.append({"src": fields[0], "dst": fields[1] if len(fields) > 1 else fields[0],
                               "flags": [f for f in flags if f]})
            spec = {"image": image, "mounts": mounts, "workdir": None, "name": None, "name_flag": None, "mount_home": False,
                    "writable": bool(options.get("rw")), "env": []}
            extra_env = {}
            for item in options.get("env", []):
                key, eq, value = item.partition("=")
                extra_env[key] = value if eq else os.environ.get(key, "")
            os.environ.update(extra_env)
            spec["env"] = list(extra_env)
            sys.exit(run_task(spec, command, record))
        raise Refused(f"[ERROR] the enroot stand-in implements import, start and version, not: {' '.join(argv[:1])}")
    except Refused as err:
        record.update(ok=False, error=str(err))
        log(record)
        sys.stderr.write(f"{err}\n")
        sys.exit(err.code)


if __name__ == "__main__":
    if sys.argv[1:2] == ["task"]:
        task_main(sys.argv[2:])
    else:
        sys.stderr.write("usage: pyxis_standin.py task SPEC -- COMMAND (run by the stand-in srun)\n")
        sys.exit(2)
