"""The Pyxis/enroot stand-in (tests/standin/pyxis) that the SLURM tests run Pyxis jobs through:
Pyxis's option grammar and refusals in srun, and each task isolated under bubblewrap in the
unsquashed image with enroot's view (its mounts, the image's environment and WORKDIR). The
task half runs here without SLURM (as slurmstepd would run it); tests/slurm runs it under srun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from container_image import pyxis_env

STANDIN = Path(__file__).resolve().parent / "pyxis"
SRUN, ENROOT, TASK = STANDIN / "srun", STANDIN / "enroot", STANDIN / "pyxis_standin.py"
sys.path.insert(0, str(STANDIN))
import pyxis_standin  # noqa: E402


def spec(image, **fields) -> dict:
    base = {"image": str(image), "mounts": [], "workdir": None, "name": None, "name_flag": None, "save": None,
            "mount_home": None, "remap_root": None, "entrypoint": None, "entrypoint_log": None,
            "writable": None, "env": [], "unshare": []}
    return {**base, **fields}


@pytest.fixture
def task(stock_squashfs, tmp_path, monkeypatch):
    """Run one task as the stand-in srun runs it on a node: (spec, command) → CompletedProcess."""
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("FT_STANDIN_LOG", str(log))

    def run(command: list[str], host: dict | None = None, **fields):
        full = {**os.environ, **pyxis_env(stock_squashfs), **(host or {})}
        return subprocess.run([sys.executable, str(TASK), "task", json.dumps(spec(fields.pop("image", stock_squashfs),
                                                                                   **fields)), "--", *command],
                              capture_output=True, text=True, timeout=120, env=full, cwd=tmp_path)

    run.log = log
    return run


def test_the_stand_ins_say_what_they_are():
    for tool in (SRUN, ENROOT):
        assert os.access(tool, os.X_OK) and "STAND-IN" in tool.read_text()
    head = " ".join(pyxis_standin.__doc__.split())
    assert "STAND-IN for Pyxis" in head and "bubblewrap" in head and "srun` is a wrapper first on PATH" in head


def test_srun_words_split_where_srun_stops_reading_options():
    longs, shorts = pyxis_standin.srun_arity(pyxis_standin.real_srun())
    assert longs["nodes"] == "required" and longs["label"] == "none" and shorts["N"] == "required"
    own, given, command = pyxis_standin.split_srun(
        ["-N", "2", "-n2", "--label", "--container-image", "/i.sqsh", "--container-mounts=/a:/b:ro+rprivate",
         "--no-container-mount-home", "--kill-on-bad-exit=1", "python", "-c", "--container-image=x"], longs, shorts)
    assert own == ["-N", "2", "-n2", "--label", "--kill-on-bad-exit=1"]
    assert given == [("container-image", "/i.sqsh"), ("container-mounts", "/a:/b:ro+rprivate"),
                     ("no-container-mount-home", None)]
    assert command == ["python", "-c", "--container-image=x"]  # the command's own words are its own
    parsed = pyxis_standin.parse_pyxis(given, {})
    assert parsed["mounts"] == [{"src": "/a", "dst": "/b", "flags": ["ro", "rprivate"]}] and parsed["mount_home"] is False


@pytest.mark.parametrize("words, said", [
    (["--container-imagee=/i.sqsh"], "srun: unrecognized option '--container-imagee'"),
    (["--container-image=/a.sqsh", "--container-image=/b.sqsh"], "pyxis: --container-image specified multiple times"),
    (["--container-image=/a.sqsh", "--container-name=x:sometimes"], 'flag must be "auto", "create", "exec" or "no_exec"'),
    (["--container-image=/a.sqsh", "--container-mounts=data:/data"], "mount source must be a relative path"),
    (["--container-image=/a.sqsh", "--container-writable", "--container-readonly"],
     "both --container-writable and --container-readonly were specified"),
    (["--container-image=/a.sqsh", "--container-env="], "pyxis: --container-env: argument required"),
    (["--container-mount-home=yes"], "option '--container-mount-home' doesn't allow an argument"),
])
def test_srun_refuses_what_pyxis_refuses(words, said):
    """Refused before any job step starts (Pyxis checks its options inside srun)."""
    result = subprocess.run([str(SRUN), "-N1", *words, "true"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f"{STANDIN}:{os.environ['PATH']}"})
    assert result.returncode == 1 and said in result.stderr, result.stderr


def test_the_task_runs_isolated_in_the_image_with_enroots_view(task, tmp_path):
    shown = tmp_path / "shown"
    shown.mkdir()
    (shown / "note").write_text("hello")
    probe = ("import os, sys; print(sys.executable, os.getcwd(), os.path.exists(%r), os.listdir('/tmp'), "
             "open('/in/note').read(), os.environ['PATH'], os.environ.get('FT_FROM_HOST'))" % str(Path(__file__)))
    result = task(["python", "-c", probe], host={"FT_FROM_HOST": "kept", "PATH": "/host/only:/usr/bin:/bin"},
                  mounts=[{"src": str(shown), "dst": "/in", "flags": ["ro"]}])
    assert result.returncode == 0, result.stderr
    # The image's Python, the image's WORKDIR (/), no host file, a fresh /tmp, the mount, the image's PATH.
    assert result.stdout.split() == ["/usr/bin/python", "/", "False", "[]", "hello",
                                     "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "kept"]
    write = task(["sh", "-c", "echo x > /in/new"], mounts=[{"src": str(shown), "dst": "/in", "flags": ["ro"]}])
    assert write.returncode != 0 and not (shown / "new").exists()
    (record,) = [r for r in map(json.loads, task.log.read_text().splitlines()) if r.get("ok")][:1]
    assert record["root"] != "/" and {"src": str(shown), "dst": "/in", "opts": "ro", "kind": "bind"} in record["mounts"]


def test_container_env_keeps_the_hosts_value_over_the_images(task):
    probe = ["sh", "-c", 'echo "$PATH"']
    host = {"PATH": f"/host/bin:{os.environ['PATH']}"}
    assert task(probe, host=host).stdout.strip() == pyxis_standin.DEFAULT_PATH  # the image's /etc/environment wins
    assert task(probe, host=host, env=["PATH"]).stdout.strip() == host["PATH"]


def test_workdir_and_refusals_in_pyxis_words(task, tmp_path):
    assert task(["pwd"], workdir="/usr/lib").stdout.strip() == "/usr/lib"
    interfaces = ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"]
    assert task(interfaces).stdout.split() != ["lo"]  # the host's network
    assert task(interfaces, unshare=["net"]).stdout.split() == ["lo"]  # --container-unshare=net: loopback only
    assert "not implemented" in task(["true"], save="/tmp/x.sqsh").stderr
    missing = task(["true"], mounts=[{"src": str(tmp_path / "gone"), "dst": "/x", "flags": []}])
    assert missing.returncode == 1
    assert f"slurmstepd: error: pyxis: --container-mounts: source path does not exist: {tmp_path / 'gone'}" in missing.stderr
    no_image = task(["true"], image=tmp_path / "none.sqsh")
    assert no_image.returncode == 1 and "pyxis: failed to create container filesystem" in no_image.stderr
    (tmp_path / "fake.sqsh").write_text("not a squashfs")
    assert "Invalid image format" in task(["true"], image=tmp_path / "fake.sqsh").stderr
    not_there = task(["no-such-program"])
    assert not_there.returncode == 2 and "execve(): no-such-program: No such file or directory" in not_there.stderr


def test_a_named_container_is_reused_whatever_image_is_named_then(task, tmp_path):
    name = f"t-{uuid.uuid4().hex[:8]}"
    first = task(["true"], name=name, name_flag="auto")
    assert first.returncode == 0, first.stderr
    second = task(["true"], image=tmp_path / "not-even-there.sqsh", name=name, name_flag="auto")
    assert second.returncode == 0, second.stderr  # Pyxis skips the import: the container exists
    assert [r.get("reused", False) for r in map(json.loads, task.log.read_text().splitlines())] == [False, True]
    again = task(["true"], name=name, name_flag="create")
    assert again.returncode == 1 and "container already exists" in again.stderr


def test_enroot_import_writes_a_squashfs_from_the_registry_or_refuses(stock_squashfs, tmp_path):
    registry = tmp_path / "registry" / "nvcr.io" / "nvidia" / "pytorch"
    registry.mkdir(parents=True)
    (registry / "25.01-py3.sqsh").symlink_to(stock_squashfs)
    env = {**os.environ, "FT_STANDIN_REGISTRY": str(tmp_path / "registry")}
    out = tmp_path / "out.sqsh"
    done = subprocess.run([str(ENROOT), "import", "-o", str(out), "docker://nvcr.io#nvidia/pytorch:25.01-py3"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and out.read_bytes()[:4] == b"hsqs", done.stderr
    exists = subprocess.run([str(ENROOT), "import", "-o", str(out), "docker://nvcr.io#nvidia/pytorch:25.01-py3"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert exists.returncode == 1 and "File already exists" in exists.stderr
    lacking = subprocess.run([str(ENROOT), "import", "-o", str(tmp_path / "x.sqsh"), "docker://nvcr.io#nvidia/nemo:1"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert lacking.returncode == 1 and "404 Not Found" in lacking.stderr and not (tmp_path / "x.sqsh").exists()
    other = subprocess.run([str(ENROOT), "create", str(out)], capture_output=True, text=True, env=env, timeout=60)
    assert other.returncode == 1 and "implements import, start and version" in other.stderr
