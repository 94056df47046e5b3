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
    # a flag set to true is the bare flag, one set to false is left out (sbatch refuses --exclusive=true)
    flags = config.validate({**config.load_factory("tiny")[0], "slurm": {"extra": {"exclusive": True, "hold": False}}})
    assert flags.slurm.extra == {"exclusive": None}


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
    assert err.value.exit_code == 2 and "pip install 'matplotlib>=3.7'" in err.value.hint and "[plot]'" in str(err.value)


# --- round two: values that used to end in a traceback ------------------------------------------


def test_non_utf8_bytes_in_an_override_are_one_line(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), LC_ALL="C.UTF-8")
    result = subprocess.run([sys.executable.encode(), b"-m", b"launcher", b"submit", b"--factory", b"tiny",
                             b"--dry-run", b"description=caf\xe9"], capture_output=True, env=env, cwd=tmp_path)
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 2 and "Traceback" not in err, err
    assert "is not UTF-8 text" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("variables, named", [
    ({"SLURM_JOB_ID": "../../../tmp/x", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, "SLURM_JOB_ID"),
    ({"SLURM_JOB_ID": "12/../..", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, "SLURM_JOB_ID"),
    ({"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "0", "SLURM_PROCID": "zero", "SLURM_NTASKS": "1"}, "SLURM_PROCID"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE"),
])
def test_launcher_variables_that_are_not_numbers_are_named(variables, named, ft, tmp_path, isolated_home):
    result = ft("train", "--factory", "tiny", env=variables)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"${named} is " in result.stderr and "not a whole number" in result.stderr
    assert not (tmp_path / "x").exists() and not list(tmp_path.parent.glob("*.batch-tiny"))
    resolved = tmp_path / "job" / "config.yaml"
    resolved.parent.mkdir()
    resolved.write_text(jobdir.config_text(submit.job_to_dict(config.resolve("tiny", []).job)))
    import subprocess
    import sys

    trainer = subprocess.run([sys.executable, "-m", "trainer", "--config", str(resolved), "--events"],
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, **variables, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert trainer.returncode == 2 and "Traceback" not in trainer.stderr, trainer.stderr
    assert f"${named} is " in trainer.stderr


@pytest.mark.parametrize("char", ["\x85", "\u2028", "\u2029"])
def test_line_break_characters_in_a_setting_survive_config_yaml(char):
    from ftcore.schema import load_job

    text = f"before{char}after {char}"
    job = config.resolve("tiny", [f"description={text}", f"data.prompt_template=Q: {{question}}{char}A:"]).job
    folder = submit.write(submit.prepare("tiny", [f"description={text}", f"data.prompt_template=Q: {{question}}{char}A:"],
                                         dry_run=True))
    again = load_job(folder / "config.yaml")  # the trainer's plain PyYAML
    assert again.description == job.description == text
    assert again.data.prompt_template == job.data.prompt_template == f"Q: {{question}}{char}A:"


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1.7e308", "9" * 400])
def test_ft_plot_of_values_an_axis_cannot_hold_draws_the_rest(value, ft, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n' f'{{"step": 2, "loss": {value}}}\n'
                                       '{"step": 3, "loss": 1.0}\n')
    result = ft("plot", str(run), "--out", str(tmp_path / "p.png"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("content", ["", "\n\n  \n", "[]"])
def test_an_empty_validation_file_is_refused_at_submit(content, tmp_path):
    val = tmp_path / ("val.json" if content == "[]" else "val.jsonl")
    val.write_text(content)
    with pytest.raises(UserError, match=f"data.val_path: {val} holds no records"):
        submit.prepare("tiny", [f"data.val_path={val}"], dry_run=False)


def test_the_login_node_reads_a_huge_line_bounded(tmp_path):
    """A 600 MB line (here 32 MB) is not read whole to check the format: the check stops at
    its bound and leaves the file to the trainer."""
    import tracemalloc

    from ftcore import formats

    big = tmp_path / "big.jsonl"
    with open(big, "w") as handle:
        handle.write('{"context": "' + "x" * (32 * 2**20) + '", "question": "q", "answers": {"text": ["a"]}}\n')
    tracemalloc.start()
    try:
        assert formats.mismatch(big, "alpaca") is None  # nothing read: nothing to say
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"read {peak / 2**20:.0f} MiB to check the format"


# --- round three: an AutoModel recipe is data from anywhere -------------------------------------

_GUIDE = Path(__file__).parent / "automodel" / "peft_guide.yaml"


def _recipe(tmp_path: Path, **edits: dict) -> Path:
    data = yaml.safe_load(_GUIDE.read_text())
    for section, keys in edits.items():
        data[section] = {**(data.get(section) or {}), **keys}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


_ODD_RECIPES = {
    "samples-as-text": ({"validation_dataset": {"limit_dataset_samples": "64"}},
                        "validation_dataset.limit_dataset_samples: 64: must be a whole number"),
    "samples-infinite": ({"validation_dataset": {"limit_dataset_samples": float("inf")}},
                         "validation_dataset.limit_dataset_samples: inf: must be a whole number"),
    "samples-a-list": ({"validation_dataset": {"limit_dataset_samples": [64, 64]}},
                       "validation_dataset.limit_dataset_samples: [64,64]: must be a whole number"),
    "batch-as-text": ({"dataloader": {"batch_size": "8"}}, "dataloader.batch_size: 8: must be a whole number"),
    "accumulation-as-text": ({"step_scheduler": {"grad_acc_steps": "4"}},
                             "step_scheduler.grad_acc_steps: 4: must be a whole number"),
    "a-string-multiplied": ({"dataloader": {"batch_size": "x" * 1000}, "step_scheduler": {"grad_acc_steps": 200000}},
                            "dataloader.batch_size: xxxx"),
    "a-count-past-any-cluster": ({"step_scheduler": {"grad_acc_steps": 10**400}},
                                 "step_scheduler.grad_acc_steps: a number of 401 digits: must be a whole number"),
    "a-huge-value": ({"dataset": {"dataset_name": "d" * 100000}},
                     "dataset.dataset_name: a value of more than 4096 characters"),
    "a-flag-as-a-word": ({"model": {"trust_remote_code": "false"}},
                         "model.trust_remote_code: false: must be true or false"),
}


@pytest.mark.parametrize("edits, said", _ODD_RECIPES.values(), ids=_ODD_RECIPES.keys())
def test_odd_values_in_an_automodel_recipe_are_named_not_computed_with(tmp_path, edits, said):
    path = _recipe(tmp_path, **edits)
    with pytest.raises(UserError) as err:
        config.resolve(str(path), ["container.runtime=none"])
    text = "\n".join(err.value.problems)
    assert said in text, text
    assert len(text) < 2000, "a refusal shows a value shortened"


def test_an_odd_automodel_value_is_exit_2_on_the_command_line(ft, tmp_path):
    path = _recipe(tmp_path, validation_dataset={"limit_dataset_samples": float("inf")})
    result = ft("show", "--factory", str(path), "container.runtime=none")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "limit_dataset_samples" in result.stderr
