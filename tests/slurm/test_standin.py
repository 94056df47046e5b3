"""The Singularity/Apptainer stand-in (tests/standin/singularity) used by the SLURM tests.

It must accept exactly the `singularity exec` grammar the real tool accepts (for the
options ft uses), reject the rest with exit status 255, log each call, and exec the
command in place (same pid, so signals reach it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STANDIN_DIR = Path(__file__).resolve().parents[1] / "standin"
SINGULARITY = STANDIN_DIR / "singularity"
APPTAINER = STANDIN_DIR / "apptainer"
PY = sys.executable


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "img.sif"
    img.write_bytes(b"SIF stand-in")
    return img


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "standin.jsonl"
    monkeypatch.setenv("FT_STANDIN_LOG", str(path))
    return path


def run(args, tool=SINGULARITY, **kw):
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, timeout=30, **kw)


def records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def test_both_names_are_executable_and_say_they_are_stand_ins():
    for tool in (SINGULARITY, APPTAINER):
        assert os.access(tool, os.X_OK), tool
    head = " ".join(SINGULARITY.read_text().split('"""')[1].split())
    assert "STAND-IN" in head and "cannot be installed" in head


@pytest.mark.parametrize(
    "opts",
    [
        [],
        ["--nv"],
        ["--nv=true"],
        ["--nv", "--cleanenv", "--containall", "--writable-tmpfs", "--no-home"],
        ["-e", "-C"],
        ["-eC"],
        ["--bind", "{d}"],
        ["--bind={d}"],
        ["-B", "{d}:/data"],
        ["-B{d}:/data:ro"],
        ["-B={d}:/data:rw"],
        ["-eB", "{d}"],
        ["--bind", "{d}:/a,{d}:/b:ro,/tmp"],
        ["-B", "{d}", "-B", "/tmp:/scratch"],
        ["--env", "A=1"],
        ["--env", "A=1,B=2"],
        ["--env=A=x=y"],
        ["--env-file", "{d}/envfile"],
        ["--pwd", "/tmp"],
        ["--home", "{d}"],
        ["--home", "{d}:/home/me"],
        ["--nv", "-B", "{d}:/work", "--pwd", "/work", "--cleanenv", "--env", "X=1"],
        ["--"],
    ],
)
def test_accepts_valid_exec_grammar(opts, image, tmp_path, log):
    (tmp_path / "envfile").write_text("# comment\nexport FOO=bar\nQ='quoted value'\n\n")
    opts = [o.format(d=tmp_path) for o in opts]
    r = run(["exec", *opts, image, "echo", "hello"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"
    (rec,) = records(log)
    assert rec["ok"] is True
    assert rec["image"] == str(image)
    assert rec["command"] == ["echo", "hello"]


@pytest.mark.parametrize(
    "uri",
    ["docker://ubuntu:22.04", "oras://ghcr.io/x/y:1", "library://a/b/c:latest", "shub://a/b", "https://example.org/x.sif"],
)
def test_accepts_image_uris_without_fetching(uri, log):
    r = run(["exec", uri, "true"])
    assert r.returncode == 0, r.stderr
    assert records(log)[0]["image"] == uri


def test_accepts_sandbox_directory_and_global_flags(tmp_path):
    r = run(["-q", "exec", "--nv", tmp_path, "true"])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no command"),
        (["run", "{img}", "true"], "only implements 'exec'"),
        (["shell", "{img}"], "only implements 'exec'"),
        (["exec"], "missing IMAGE"),
        (["exec", "--nv"], "missing IMAGE"),
        (["exec", "{img}"], "missing COMMAND"),
        (["exec", "--nv", "{img}"], "missing COMMAND"),
        (["exec", "--bogus", "{img}", "true"], "unknown flag: --bogus"),
        (["exec", "--rocm", "{img}", "true"], "unknown flag: --rocm"),
        (["exec", "-x", "{img}", "true"], "unknown shorthand flag"),
        (["exec", "-eX", "{img}", "true"], "unknown shorthand flag"),
        (["exec", "--nv=maybe", "{img}", "true"], "invalid argument"),
        (["exec", "{d}/missing.sif", "true"], "could not open image"),
        (["exec", "ftp://host/x.sif", "true"], "unsupported image URI"),
        (["exec", "--bind", "{d}/nope", "{img}", "true"], "doesn't exist"),
        (["exec", "--bind", "{d}:relative", "{img}", "true"], "must be an absolute path"),
        (["exec", "--bind", "{d}:/x:rx", "{img}", "true"], "unknown bind option"),
        (["exec", "--bind", "{d}:/x:ro:extra", "{img}", "true"], "expected src[:dst[:opts]]"),
        (["exec", "--bind", "{d},,/tmp", "{img}", "true"], "empty entry"),
        (["exec", "--bind", ":/x", "{img}", "true"], "empty source"),
        (["exec", "{img}", "--bind"], None),  # flags after IMAGE belong to the command: runs '--bind'
        (["exec", "--bind"], "flag needs an argument"),
        (["exec", "-B"], "flag needs an argument"),
        (["exec", "--env", "NOEQUALS", "{img}", "true"], "key=value"),
        (["exec", "--env", "=1", "{img}", "true"], "empty variable name"),
        (["exec", "--env-file", "{d}/nofile", "{img}", "true"], "no such file"),
        (["exec", "--pwd", "relative/dir", "{img}", "true"], "absolute path"),
        (["exec", "--pwd", "/definitely/not/here", "{img}", "true"], "could not set working directory"),
        (["exec", "--home", ":/x", "{img}", "true"], "--home"),
        (["exec", "{img}", "no-such-command-ft-standin"], "executable file not found"),
    ],
)
def test_rejects_invalid_invocations_with_255(argv, message, image, tmp_path, log):
    argv = [a.format(img=image, d=tmp_path) for a in argv]
    r = run(argv)
    assert r.returncode == 255, (r.returncode, r.stdout, r.stderr)
    assert "FATAL" in r.stderr
    if message:
        assert message in r.stderr
    assert r.stdout == ""
    recs = records(log)
    assert len(recs) == 1
    if message and "executable file not found" not in message:
        assert recs[0]["ok"] is False
        assert message in recs[0]["error"]


def test_execs_in_place_and_propagates_exit_status(image, log):
    r = run(["exec", image, "sh", "-c", "echo $$; exit 7"])
    assert r.returncode == 7
    (rec,) = records(log)
    assert int(r.stdout.strip()) == rec["pid"], "the command must replace the stand-in (same pid)"


def test_signals_reach_the_command_directly(image, tmp_path):
    ready = tmp_path / "ready"
    code = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGUSR1, lambda *a: (print('got USR1', flush=True), sys.exit(0)))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
        "sys.exit(5)\n"
    )
    proc = subprocess.Popen([str(SINGULARITY), "exec", "--nv", str(image), PY, "-c", code],
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "command did not start"
            assert proc.poll() is None, proc.returncode
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out == "got USR1\n"


def test_environment_and_container_variables(image, tmp_path, monkeypatch):
    monkeypatch.setenv("HOST_ONLY", "kept")
    monkeypatch.setenv("SINGULARITYENV_FROM_PREFIX", "p1")
    monkeypatch.setenv("APPTAINERENV_FROM_PREFIX2", "p2")
    envfile = tmp_path / "envfile"
    envfile.write_text("A=from-file\nB=from-file\n")
    code = (
        "import os, json; print(json.dumps({k: os.environ.get(k) for k in "
        "['HOST_ONLY','A','B','C','FROM_PREFIX','FROM_PREFIX2','SINGULARITY_CONTAINER','APPTAINER_CONTAINER','SINGULARITY_NAME']}))"
    )
    r = run(["exec", "--cleanenv", "--env-file", envfile, "--env", "B=from-flag,C=1,2", image, PY, "-c", code])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "HOST_ONLY": "kept",  # no isolation: the host environment stays (venv, SLURM_*)
        "A": "from-file",
        "B": "from-flag",  # --env wins over --env-file
        "C": "1,2",  # a piece without '=' continues the previous value
        "FROM_PREFIX": "p1",
        "FROM_PREFIX2": "p2",
        "SINGULARITY_CONTAINER": str(image),
        "APPTAINER_CONTAINER": str(image),
        "SINGULARITY_NAME": "img.sif",
    }


def test_pwd_is_mapped_through_binds(image, tmp_path, log):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    r = run(["exec", "-B", f"{work}:/workspace", "--pwd", "/workspace/sub", image, "pwd"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(work / "sub")
    (rec,) = records(log)
    assert rec["pwd"] == "/workspace/sub"
    assert rec["host_pwd"] == str(work / "sub")


def test_log_lines_have_the_invocation(image, tmp_path, log):
    other = tmp_path / "other"
    other.mkdir()
    r = run(["exec", "--nv", "-B", f"{tmp_path}:/data:ro,{other}", image, "true"], cwd=other)
    assert r.returncode == 0, r.stderr
    r = run(["exec", image, "true"], tool=APPTAINER)
    assert r.returncode == 0, r.stderr
    r = run(["exec", "--what", image, "true"])
    assert r.returncode == 255
    first, second, third = records(log)
    assert first["argv"] == ["singularity", "exec", "--nv", "-B", f"{tmp_path}:/data:ro,{other}", str(image), "true"]
    assert first["image"] == str(image)
    assert first["nv"] is True
    assert first["cwd"] == str(other)
    assert first["binds"] == [
        {"src": str(tmp_path), "dst": "/data", "opts": "ro"},
        {"src": str(other), "dst": str(other), "opts": "rw"},
    ]
    assert second["tool"] == "apptainer" and second["nv"] is False and second["binds"] == []
    assert third["ok"] is False and "unknown flag" in third["error"]


def test_no_log_without_env(image, tmp_path, monkeypatch):
    monkeypatch.delenv("FT_STANDIN_LOG", raising=False)
    r = run(["exec", image, "true"], cwd=tmp_path)
    assert r.returncode == 0
    assert list(tmp_path.iterdir()) == [image]


def test_version():
    r = run(["--version"])
    assert r.returncode == 0 and "standin" in r.stdout
