"""The Singularity/Apptainer stand-in (tests/standin/singularity) that the SLURM tests run
jobs through: the `exec` grammar of the real tool, refused input exits 255 with the real
tool's words, and the command runs isolated under bubblewrap with Apptainer's view of the
world (the image as root, the default binds, the image's PATH), signals forwarded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from container_image import STOCK_URI, build_sif, standin_registry

STANDIN_DIR = Path(__file__).resolve().parent
SINGULARITY = STANDIN_DIR / "singularity"
APPTAINER = STANDIN_DIR / "apptainer"
REPO = STANDIN_DIR.parents[1]


@pytest.fixture
def image(tmp_path, stock_image):
    return build_sif(tmp_path / "img.sif", stock_image)


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "standin.jsonl"
    monkeypatch.setenv("FT_STANDIN_LOG", str(path))
    return path


def run(args, tool=SINGULARITY, **kw):
    kw.setdefault("cwd", "/tmp")
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, timeout=60, **kw)


def _under_default_binds(path: Path, cwd: str = "/tmp") -> bool:
    """Whether Apptainer's default binds ($HOME, /tmp, /var/tmp, the working directory) show `path`."""
    path = path.resolve()
    return any(path == root or root in path.parents
               for root in (Path.home().resolve(), Path("/tmp"), Path("/var/tmp"), Path(cwd).resolve()))


def records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def test_both_names_are_executable_and_say_they_are_stand_ins():
    for tool in (SINGULARITY, APPTAINER):
        assert os.access(tool, os.X_OK), tool
    head = " ".join(SINGULARITY.read_text().split('"""')[1].split())
    assert "STAND-IN" in head and "cannot be installed" in head and "bubblewrap" in head


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
    "argv, message",
    [
        ([], "no command"),
        (["run", "{img}", "true"], "only implements 'exec'"),
        (["shell", "{img}"], "only implements 'exec'"),
        (["exec", "{d}/not-a-sif", "true"], "image format not recognized"),
        (["exec", "shub://a/b", "true"], "unsupported image URI"),
        (["exec", "docker://ft-test/absent:1", "true"], "MANIFEST_UNKNOWN"),
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
        (["exec", "{img}", "{host_python}", "-V"], "stat "),  # a host interpreter no bind covers is not in the image
    ],
)
def test_rejects_invalid_invocations_with_255(argv, message, image, tmp_path, log, monkeypatch):
    monkeypatch.setenv("FT_STANDIN_REGISTRY", str(standin_registry(tmp_path / "registry", Path("/nonexistent"))))
    (tmp_path / "not-a-sif").write_bytes(b"SIF stand-in")
    # The host's own interpreter, where no default bind reaches ($HOME, /tmp and the working
    # directory are bound, and a checkout and its venv may live under either).
    host = Path("/srv") / f"ft-standin-test-{os.getpid()}" / "bin"
    host.mkdir(parents=True, exist_ok=True)
    if not (host / "python").exists():
        (host / "python").symlink_to(sys.executable)
    argv = [a.format(img=image, d=tmp_path, host_python=host / "python") for a in argv]
    try:
        r = run(argv)
    finally:
        shutil.rmtree(host.parent, ignore_errors=True)
    assert r.returncode == 255, (r.returncode, r.stdout, r.stderr)
    assert "FATAL" in r.stderr
    if message:
        assert message in r.stderr
    assert r.stdout == ""
    recs = records(log)
    assert len(recs) == 1
    if message and "FATAL" not in message and recs[0]["ok"] is False:
        assert message in recs[0]["error"]


def test_missing_image_and_bind_source_say_what_apptainer_says(image, tmp_path):
    r = run(["exec", tmp_path / "gone" / "x.sif", "true"])
    assert r.returncode == 255
    missing = tmp_path / "gone"
    assert r.stderr == (f"FATAL:   could not open image {missing}/x.sif: failed to retrieve path for "
                        f"{missing}/x.sif: lstat {missing}: no such file or directory\n")
    r = run(["exec", "-B", f"{missing}:/data", image, "true"])
    assert r.returncode == 255
    assert r.stderr == (f"FATAL:   container creation failed: mount hook function failure: mount {missing}->/data "
                        f"error: while mounting {missing}: mount source {missing} doesn't exist\n")


def test_the_command_sees_the_image_not_the_host(image, stock_image, tmp_path):
    """The image is the root filesystem: its Python, its PATH; the checkout, the host's venv
    and every folder that no bind covers are invisible; the image is read-only."""
    code = ("import sys, os, json; print(json.dumps({'exe': sys.executable, 'path': os.environ['PATH'], "
            f"'repo': os.path.exists({str(REPO)!r}), 'venv': os.path.exists({sys.prefix!r}), "
            "'srv': os.listdir('/srv'), 'torch': __import__('torch').__version__}))")
    r = run(["exec", image, "python", "-c", code], env={**os.environ, "PATH": f"{sys.prefix}/bin:/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["exe"] == "/usr/bin/python"
    assert seen["path"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # The checkout and the host's venv are hidden unless a default bind shows them (a clone
    # under $HOME or /tmp is visible there, as with Apptainer); /srv is covered by none.
    assert seen["repo"] is _under_default_binds(REPO) and seen["venv"] is _under_default_binds(Path(sys.prefix))
    assert seen["srv"] == []
    assert seen["torch"].startswith("2.13.0")
    r = run(["exec", image, "sh", "-c", "touch /usr/ft-was-here"])
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert not (stock_image / "usr" / "ft-was-here").exists()


def test_default_binds_and_user_binds(image, tmp_path):
    """HOME, /tmp, /var/tmp, /proc, /sys, /dev and the working directory are there; a folder
    outside them only through --bind (missing bind points are made); `:ro` is read-only."""
    outside = Path("/srv") / f"ft-standin-test-{os.getpid()}"
    (outside / "data").mkdir(parents=True, exist_ok=True)
    try:
        (outside / "data" / "x.txt").write_text("hello")
        work = tmp_path / "work"
        work.mkdir()
        probe = ("for p in $HOME /tmp /var/tmp /proc/self /sys/kernel /dev/null $PWD; do [ -e $p ] || echo missing $p; done; "
                 f"[ -e {outside} ] && echo visible {outside}; pwd")
        r = run(["exec", image, "sh", "-c", probe], cwd=work)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{work}\n"
        r = run(["exec", "-B", f"{outside}/data:/srv/in/data:ro,{outside}", image, "sh", "-c",
                 f"cat /srv/in/data/x.txt; touch {outside}/new; touch /srv/in/data/no"], cwd=work)
        assert r.stdout == "hello" and "Read-only file system" in r.stderr
        assert (outside / "new").exists() and not (outside / "data" / "no").exists()
    finally:
        subprocess.run(["rm", "-rf", str(outside)], check=False)


def test_exit_status_is_the_commands(image):
    assert run(["exec", image, "sh", "-c", "exit 7"]).returncode == 7
    assert run(["exec", image, "sh", "-c", "kill -TERM $$"]).returncode == 128 + signal.SIGTERM


def test_signals_are_forwarded_to_the_command(image, tmp_path):
    ready = tmp_path / "ready"
    code = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGUSR1, lambda *a: (print('got USR1', flush=True), sys.exit(0)))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
        "sys.exit(5)\n"
    )
    proc = subprocess.Popen([str(SINGULARITY), "exec", "--nv", str(image), "python", "-c", code],
                            stdout=subprocess.PIPE, text=True, cwd="/tmp")
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
    monkeypatch.setenv("LD_LIBRARY_PATH", "/host/lib")
    monkeypatch.setenv("SINGULARITYENV_FROM_PREFIX", "p1")
    monkeypatch.setenv("APPTAINERENV_FROM_PREFIX2", "p2")
    envfile = tmp_path / "envfile"
    envfile.write_text("A=from-file\nB=from-file\n")
    names = ["HOST_ONLY", "LD_LIBRARY_PATH", "A", "B", "C", "FROM_PREFIX", "FROM_PREFIX2", "PATH",
             "SINGULARITY_CONTAINER", "APPTAINER_CONTAINER", "SINGULARITY_NAME"]
    code = f"import os, json; print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))"
    r = run(["exec", "--env-file", envfile, "--env", "B=from-flag,C=1,2,PATH=/usr/bin:/bin", image, "python", "-c", code])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "HOST_ONLY": "kept",  # the host's environment passes, except PATH and LD_LIBRARY_PATH
        "LD_LIBRARY_PATH": None,
        "A": "from-file",
        "B": "from-flag",  # --env wins over --env-file
        "C": "1,2",  # a piece without '=' continues the previous value
        "FROM_PREFIX": "p1",
        "FROM_PREFIX2": "p2",
        "PATH": "/usr/bin:/bin",  # --env wins over the image's env scripts
        "SINGULARITY_CONTAINER": str(image),
        "APPTAINER_CONTAINER": str(image),
        "SINGULARITY_NAME": "img.sif",
    }
    r = run(["exec", "--cleanenv", image, "python", "-c", code])
    seen = json.loads(r.stdout)
    assert seen["HOST_ONLY"] is None and seen["FROM_PREFIX"] == "p1"


def test_pwd_is_a_container_path(image, tmp_path, log):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    r = run(["exec", "-B", f"{work}:/workspace", "--pwd", "/workspace/sub", image, "pwd"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "/workspace/sub"
    (rec,) = records(log)
    assert rec["pwd"] == "/workspace/sub"


def test_log_lines_have_the_invocation(image, tmp_path, log):
    other = tmp_path / "other"
    other.mkdir()
    r = run(["exec", "--nv", "-B", f"{tmp_path}:/data:ro,{other}", image, "true"], cwd=other)
    assert r.returncode == 0, r.stderr
    assert "WARNING: Could not find any nv files on this host!" in r.stderr
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
    assert {"src": "/tmp", "dst": "/tmp", "opts": "rw", "kind": "bind"} in first["mounts"]
    assert second["tool"] == "apptainer" and second["nv"] is False and second["binds"] == []
    assert third["ok"] is False and "unknown flag" in third["error"]


def test_no_log_without_env(image, tmp_path, monkeypatch):
    monkeypatch.delenv("FT_STANDIN_LOG", raising=False)
    r = run(["exec", image, "true"], cwd=tmp_path)
    assert r.returncode == 0
    assert list(tmp_path.iterdir()) == [image]


def test_pull_resolves_the_registry_and_refuses_what_the_real_tool_refuses(stock_image, tmp_path, monkeypatch):
    monkeypatch.delenv("FT_STANDIN_REGISTRY", raising=False)
    r = run(["pull", tmp_path / "a.sif", STOCK_URI])
    assert r.returncode == 255 and "no such host" in r.stderr and not (tmp_path / "a.sif").exists()
    monkeypatch.setenv("FT_STANDIN_REGISTRY", str(standin_registry(tmp_path / "registry", stock_image)))
    r = run(["pull", tmp_path / "a.sif", STOCK_URI])
    assert r.returncode == 0, r.stderr
    r = run(["exec", tmp_path / "a.sif", "python", "-c", "print('in the pulled image')"])
    assert r.stdout == "in the pulled image\n", r.stderr
    r = run(["pull", tmp_path / "a.sif", STOCK_URI])
    assert r.returncode == 255 and f'Image file already exists: "{tmp_path}/a.sif" - will not overwrite' in r.stderr
    assert run(["pull", "--force", tmp_path / "a.sif", STOCK_URI]).returncode == 0
    r = run(["pull", "--dir", tmp_path, STOCK_URI])
    assert r.returncode == 0 and (tmp_path / "stock_latest.sif").is_file()
    r = run(["pull", tmp_path / "b.sif", "docker://ft-test/stock:2.0"])
    assert r.returncode == 255 and "MANIFEST_UNKNOWN" in r.stderr and not (tmp_path / "b.sif").exists()
    r = run(["exec", STOCK_URI, "true"])  # exec pulls a URI into the cache first
    assert r.returncode == 0, r.stderr


def test_a_pull_killed_half_way_leaves_a_file_that_is_no_image(stock_image, tmp_path, monkeypatch):
    monkeypatch.setenv("FT_STANDIN_REGISTRY", str(standin_registry(tmp_path / "registry", stock_image)))
    monkeypatch.setenv("FT_STANDIN_PULL_SECONDS", "30")
    proc = subprocess.Popen([str(SINGULARITY), "pull", str(tmp_path / "c.sif"), STOCK_URI], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not (tmp_path / "c.sif").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    r = run(["exec", tmp_path / "c.sif", "true"])
    assert r.returncode == 255 and "image format not recognized" in r.stderr


def test_version():
    r = run(["--version"])
    assert r.returncode == 0 and "standin" in r.stdout


def test_the_stock_image_holds_the_contract_and_nothing_of_ft(stock_image):
    """What scripts/make-test-image.sh builds: a Python with the contract's packages (torch the
    pinned CPU wheel), no ft package, no test tool, nothing of the checkout or its venv; a
    second call is a cache hit that names the same image."""
    from ftcore import contract

    (site,) = (stock_image / "usr" / "local" / "lib").glob("python3*/dist-packages")
    names = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {p.dist.lower().replace("-", "_") for p in contract.REQUIRED} <= names
    assert (site / "torch" / "version.py").read_text().count("2.13.0") >= 1
    assert not names & {"ft", "pytest", "hypothesis", "datasets", "matplotlib"}
    for package in ("ftcore", "launcher", "trainer", "fttools"):
        assert not (site / package).exists()
    assert not (stock_image / str(REPO).lstrip("/")).exists() and not (stock_image / "opt" / "ft").exists()
    if not os.environ.get("FT_TEST_IMAGE"):
        again = subprocess.run(["bash", str(REPO / "scripts" / "make-test-image.sh")], capture_output=True, text=True)
        assert again.returncode == 0 and again.stdout.strip() == str(stock_image)
