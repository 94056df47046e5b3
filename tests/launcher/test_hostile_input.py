"""Hostile input from the user's side: secrets pasted by value, free-form text kept as
written (no YAML 1.1 coercion), sweeps over what shapes the script, and odd values that
must end in a one-line message with exit 2, never a traceback."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftcore import secrets
from ftcore.errors import UserError
from launcher import config, jobdir, render, submit

# --- secrets by value ---------------------------------------------------------------------------

_SECRET = st.text(string.ascii_letters + string.digits + "-_.:/+=@", min_size=8, max_size=40).map(lambda s: "hf_" + s)
_NAMES = st.sampled_from(["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MY_SERVICE_PASSWORD"])
# (where the user pastes it, as overrides and sweeps)
_PLACES = {
    "description": lambda s: (["description=run with " + s], []),
    "container.env.HF_AUTH": lambda s: ([f"container.env.HF_AUTH={s}"], []),
    "slurm.extra.comment": lambda s: ([f"slurm.extra.comment={s}"], []),
    "slurm.setup": lambda s: ([f'slurm.setup=["export AUTH={s}"]'], []),
    "slurm.job_name": lambda s: ([f"slurm.job_name=x{s}"], []),
    "description (a sweep value)": lambda s: ([], [f"description=plain,{s}"]),
}


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=_SECRET, name=_NAMES, place=st.sampled_from(sorted(_PLACES)))
def test_a_secret_value_never_reaches_a_job_folder(secret, name, place, isolated_home):
    overrides, sweeps = _PLACES[place](secret)
    os.environ[name] = secret
    try:
        with pytest.raises(UserError) as err:
            prepared = submit.prepare("tiny", overrides, executor="slurm", dry_run=True, sweeps=sweeps)
            submit.write(prepared, argv=["ft", "submit", *overrides])
    finally:
        del os.environ[name]
    message = str(err.value)
    assert f"${name}" in message and place.split(" ")[0] in message, message
    assert secret not in message, "the refusal must not print the secret either"
    assert not any(secret in p.read_bytes().decode(errors="replace") for p in _files_under(isolated_home))


def test_the_last_guard_checks_every_file_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijkl")
    with pytest.raises(UserError, match=r"command.txt holds the value of \$HF_TOKEN"):
        jobdir.create("tiny", lambda f: {"config.yaml": "name: x\n", "command.txt": "ft --x hf_abcdefghijkl\n"}, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []  # the temporary folder went too


def test_short_or_unrelated_environment_values_are_not_secrets():
    env = {"HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "HF_TOKEN": "hf_long_enough_value", "PATH": "/usr/bin:/bin"}
    assert secrets.secret_values(env) == {"HF_TOKEN": "hf_long_enough_value"}
    assert secrets.find({"a": {"b": ["x hf_long_enough_value"]}}, environ=env) == [
        "a.b holds the value of $HF_TOKEN: ft never writes secrets to a job folder. Leave it in your "
        "environment (the job inherits $HF_TOKEN) and read it from there"]
    assert secrets.redact("said hf_long_enough_value", env) == "said $HF_TOKEN"


# --- what the user wrote is what runs -----------------------------------------------------------

_WRITTEN = {"begin": "16:00", "comment": "010", "mail-user": "no", "mail-type": "END", "nice": "10",
            "deadline": "2026-01-01T10:00", "licenses": "1.10", "wckey": "0x10", "x11": "on"}


def test_slurm_extra_keeps_its_text_from_overrides():
    job = config.resolve("tiny", [f"slurm.extra.{k}={v}" for k, v in _WRITTEN.items()]).job
    assert job.slurm.extra == _WRITTEN
    options = render.sbatch_options(job, Path("/j"))
    assert "--begin=16:00" in options and "--comment=010" in options and "--mail-user=no" in options


def test_slurm_extra_and_text_fields_keep_their_text_from_yaml_files(tmp_path):
    plain = "\n".join(f"    {k}: {v}" for k, v in _WRITTEN.items())
    profile = tmp_path / "cluster.yaml"
    profile.write_text(f"slurm:\n  time: 1:00:00\n  account: 0012\n  extra:\n{plain}\n"
                       "container:\n  env:\n    OMP_NUM_THREADS: 4\n    FLAG: no\n")
    job = config.resolve("tiny", [], str(profile)).job
    assert job.slurm.extra == _WRITTEN
    assert job.slurm.time == "1:00:00" and job.slurm.account == "0012"
    assert job.container.env == {"OMP_NUM_THREADS": "4", "FLAG": "no"}
    # Written to config.yaml and read back (by the trainer's plain PyYAML too): the same text.
    text = jobdir.config_text(submit.job_to_dict(job))
    assert yaml.safe_load(text)["slurm"]["extra"] == _WRITTEN
    assert config.load_yaml(text, "x")["slurm"]["extra"] == _WRITTEN


def test_numbers_flags_and_nulls_still_read_as_such():
    job = config.resolve("tiny", ["optim.lr=1e-4", "trainer.val_every_steps=null", "slurm.extra.exclusive=null",
                                  "container.nv=false"]).job
    assert job.optim.lr == 1e-4 and job.trainer.val_every_steps is None and job.slurm.extra["exclusive"] is None
    with pytest.raises(UserError, match="not an sbatch value: write null for a flag"):
        config.validate({**config.load_factory("tiny")[0], "slurm": {"extra": {"exclusive": True}}})


@pytest.mark.parametrize("key", ["nodes", "ntasks-per-node", "time", "output", "array", "dependency", "job-name"])
def test_slurm_extra_cannot_undo_what_ft_derives(key):
    with pytest.raises(UserError, match=f"ft sets --{key} itself"):
        config.resolve("tiny", [f"slurm.extra.{key}=4"])


@pytest.mark.parametrize("sweep", ["trainer.devices=1,2", "slurm.time=00:10:00,00:20:00", "container.env.X=a,b",
                                   "slurm.extra.comment=a,b", "trainer.num_nodes=1,2"])
def test_a_sweep_over_what_shapes_the_script_is_refused(sweep):
    key = sweep.partition("=")[0]
    with pytest.raises(UserError, match=f"--sweep {key}: its values change the sbatch script"):
        submit.prepare("tiny", ["data.micro_batch_size=1", "data.global_batch_size=4"], executor="slurm", dry_run=True,
                       sweeps=[sweep, "optim.lr=1e-4,2e-4"])


def test_a_sweep_over_training_settings_is_one_array():
    prepared = submit.prepare("tiny", [], executor="slurm", dry_run=True,
                              sweeps=["optim.lr=1e-4,2e-4", "peft.dim=4,8"])
    assert len(prepared.tasks) == 4


# --- YAML that expands, nests or is not text ----------------------------------------------------

@pytest.mark.parametrize("value", ["&a foo", "*a", "[&a x, *a]", "{a: &b 1, c: *b}"])
def test_anchors_and_aliases_are_refused_in_overrides(value):
    with pytest.raises(UserError, match="anchors and aliases"):
        config.resolve("tiny", [f"model.config={value}"])


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(7))


@pytest.mark.parametrize("text, message", [
    (BOMB, "expands to more than"),
    ("a: &a [*a]\n", "refers to the value that contains it"),
    ("[" * 3000 + "]" * 3000, "nested more than"),
    ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 80)) + "  " * 80 + "v: 1\n", "nested more than"),
    ("x: 1\n" * 300_000, "too large"),
])
def test_files_that_expand_or_nest_too_far_are_refused(text, message, tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        config.read_yaml(path, "factory")


@pytest.mark.parametrize("content", [bytes(range(256)), b"\xff\xfe\x00a\x00", b"name: \x00x\n", b"\x89PNG\r\n\x1a\n"])
@pytest.mark.parametrize("which", ["factory", "profile", "user config"])
def test_binary_files_are_refused_with_their_name(content, which, tmp_path, monkeypatch):
    path = tmp_path / "f.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=str(path) if which != "user config" else "ft config"):
        if which == "factory":
            config.resolve(str(path), [])
        elif which == "profile":
            config.resolve("tiny", [], str(path))
        else:
            monkeypatch.setenv("FT_CONFIG_DIR", str(tmp_path))
            path.rename(tmp_path / "config.yaml")
            config.resolve("tiny", [])


@pytest.mark.parametrize("text", ["factory_dirs: 5\n", "factory_dirs: [1, null]\n", "profile: [a]\n", "colour: blue\n"])
def test_a_user_config_of_the_wrong_shape_is_named(text, tmp_path, monkeypatch):
    monkeypatch.setenv("FT_CONFIG_DIR", str(tmp_path))
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(UserError, match="ft config"):
        config.resolve("tiny", [])


def test_a_nul_byte_in_any_value_is_refused(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text('description: "a\\0b"\nmodel:\n  config:\n    note: "x\\0"\n')
    with pytest.raises(UserError, match="NUL byte"):
        config.resolve("tiny", [], str(profile))


@pytest.mark.parametrize("template, message", [
    ("{question", "not a valid format string"), ("{}", "name a record field"), ("{0}", "name a record field"),
    ("{question.__class__}", "name a record field"), ("{context[0]}", "name a record field"),
])
def test_malformed_prompt_templates_are_refused_before_submitting(template, message):
    with pytest.raises(UserError, match=message):
        config.resolve("tiny", [f"data.prompt_template={template}"])


# --- the command line: a message and exit 2 -----------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["show", "--factory", "~nosuchuser_ft/f.yaml"], "no user 'nosuchuser_ft'"),
    (["submit", "--factory", "tiny", "--dry-run", "model.path=~nosuchuser_ft/m", "model.init=pretrained"], "no user"),
    (["show", "--factory", "x" * 300 + ".yaml"], "File name too long"),
    (["jobs", "--limit", "0"], "--limit"),
    (["generate", "JOB", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["eval", "JOB", "--data", "d.jsonl", "--limit", "-1"], "--limit"),
    (["plan", "--factory", "tiny", "--gpu-memory", "0"], "--gpu-memory"),
    (["plan", "--factory", "tiny", "--gpu-memory", "-5"], "--gpu-memory"),
    (["logs", "JOB", "--rank", "-1"], "--rank"),
    (["submit", "--factory", "tiny", "--dry-run", "model.config=&a x"], "anchors and aliases"),
])
def test_odd_command_lines_end_in_a_message(args, message, monkeypatch, capsys):
    """Through the real entry point, in this process: any exception but its exit fails here."""
    from launcher import cli

    monkeypatch.setattr("sys.argv", ["ft", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err


def test_a_newline_in_ft_home_is_refused_before_anything_is_written(ft, tmp_path):
    home = tmp_path / "a\nb"
    result = ft("submit", "--factory", "tiny", "--dry-run", env={"FT_HOME": str(home)})
    assert result.returncode == 2 and "control character" in result.stderr
    assert not home.exists()


_COMMANDS = (["submit", "--factory", "tiny", "--dry-run"], ["submit", "--factory", "tiny", "--executor", "local", "--yes"],
             ["jobs"])


def _can_mount() -> bool:
    import subprocess

    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_a_read_only_or_full_ft_home_is_a_message_from_every_command(kind, ft, tmp_path, monkeypatch, capsys):
    """A real read-only (or 64 KiB, filled) tmpfs as FT_HOME, in a private mount namespace.
    Where mounting is not allowed, the same errors are injected into the writes in-process."""
    import errno
    import sys

    home = tmp_path / "home"
    home.mkdir()
    want = {"read-only": "Read-only file system", "full": "No space left on device"}[kind]
    if _can_mount():
        mount = ("mount -t tmpfs -o ro tmpfs \"$H\"" if kind == "read-only" else
                 "mount -t tmpfs -o size=64k tmpfs \"$H\" && mkdir \"$H/jobs\" && "
                 "(dd if=/dev/zero of=\"$H/filler\" bs=4k 2>/dev/null; true)")
        for args in _COMMANDS:
            script = f'{mount} && exec "$PY" -m launcher "$@"'
            result = _run_unshared(script, args, home)
            assert "Traceback" not in result.stderr, (args, result.stderr)
            if args[0] == "submit":  # writes: refused in one line
                assert result.returncode == 2 and want in result.stderr, result.stderr
            else:  # only reads: works, or says why not
                assert result.returncode in (0, 2), (args, result.stderr)
        return
    # Stand-in: the error the filesystem would give, from the first write ft attempts.
    from launcher import cli

    code = errno.EROFS if kind == "read-only" else errno.ENOSPC

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(home))

    monkeypatch.setattr(os, "mkdir", refuse)
    monkeypatch.setenv("FT_HOME", str(home / "x"))
    for args in _COMMANDS[:1]:
        monkeypatch.setattr("sys.argv", ["ft", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        assert exit_info.value.code == 2 and want in capsys.readouterr().err


def _run_unshared(script: str, args: list[str], home: Path):
    import subprocess
    import sys

    env = dict(os.environ, FT_HOME=str(home), H=str(home), PY=sys.executable,
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=home.parent)


def test_a_missing_optional_extra_says_how_to_install_it(tmp_path, monkeypatch):
    from ftcore import contract

    monkeypatch.setattr(contract, "EXTRAS", {**contract.EXTRAS, "plot": (contract.Package("no_such_module_ft", "matplotlib", "3.7"),)})
    with pytest.raises(UserError) as err:
        contract.require_extra("plot", "ft plot")
    assert err.value.exit_code == 2 and "pip install 'matplotlib>=3.7'" in err.value.hint and "ft[plot]" in str(err.value)
