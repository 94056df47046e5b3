"""`--cluster` before any connection: names that could become ssh options or shell, the words
sent, and which of the job's files travel. No ssh is started here (tests/slurm/test_remote_cluster.py
runs the real thing against a real sshd)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from ftcore.errors import UserError
from launcher import remote

HOSTILE = ["-oProxyCommand=touch /tmp/pwned", "host name", "host\nname", "-p2222", "a;b", "$(id)", "", "-"]


def write_config(tmp_path: Path, clusters: dict) -> None:
    folder = tmp_path / "ft-config"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"clusters": clusters}))


@pytest.mark.parametrize("name", HOSTILE)
def test_a_cluster_name_that_could_be_an_option_or_shell_is_refused(name):
    with pytest.raises(UserError, match="not a host or user name"):
        remote.cluster(name)


@pytest.mark.parametrize("key", ["host", "user"])
@pytest.mark.parametrize("value", HOSTILE)
def test_hosts_and_users_in_ft_config_are_checked_too(tmp_path, key, value):
    write_config(tmp_path, {"hpc": {"host": "login.example.org", key: value}})
    with pytest.raises(UserError, match="not a host or user name"):
        remote.cluster("hpc")


def test_ssh_gets_options_first_then_double_dash_then_the_host(tmp_path):
    write_config(tmp_path, {"hpc": {"host": "login.example.org", "user": "ana", "port": 2222,
                                    "ft": "'/opt/ft venv/bin/ft'", "ft_home": "/scratch/ana/my ft"}})
    c = remote.cluster("hpc")
    argv = remote.ssh_argv(c, remote.remote_command(c, [*c.ft, "status", "$(touch /tmp/x); rm -rf ~", "-oFoo"]))
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and "SendEnv=-*" in argv
    dash = argv.index("--")
    assert argv[dash + 1] == "login.example.org" and len(argv) == dash + 3
    assert argv[dash - 4:dash] == ["-p", "2222", "-l", "ana"]
    # The remote shell reads back exactly the words ft meant: nothing runs, nothing splits.
    assert shlex.split(argv[-1]) == ["env", "FT_HOME=/scratch/ana/my ft", "/opt/ft venv/bin/ft", "status",
                                     "$(touch /tmp/x); rm -rf ~", "-oFoo"]


def test_a_secret_never_reaches_a_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    c = remote.Cluster("hpc", "login")
    with pytest.raises(UserError, match=r"holds the value of \$HF_TOKEN"):
        remote.remote_command(c, ["submit", "description=hf_abcdefghijklmnop"])


def test_unknown_keys_and_bad_values_in_a_cluster_entry_are_named(tmp_path):
    write_config(tmp_path, {"hpc": {"hots": "x", "port": "22", "ft": ""}})
    with pytest.raises(UserError) as err:
        remote.cluster("hpc")
    text = "\n".join(err.value.problems)
    assert "unknown key 'hots'" in text and "port must be a port number" in text and "clusters.hpc.ft" in text


def test_a_name_not_in_ft_config_is_an_ssh_alias():
    assert remote.cluster("login-1.hpc") == remote.Cluster("login-1.hpc", "login-1.hpc")


def test_small_local_files_travel_large_ones_and_folders_are_refused_with_the_path_to_use(tmp_path):
    from launcher.config import resolve

    small = tmp_path / "qa.jsonl"
    small.write_text('{"question": "2+2?", "answer": "4"}\n' * 20)
    job = resolve("tiny", [f"data.path={small}", "data.val_path=/cluster/only/val.jsonl"]).job
    upload = remote.plan_upload(job, "hpc")
    assert list(upload.files.values()) == [small]
    assert upload.config["data"]["path"] == f"{remote.UPLOAD_MARK}/files/data.path-qa.jsonl"
    assert upload.config["data"]["val_path"] == "/cluster/only/val.jsonl"  # not here: the cluster's path

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    job = resolve("tiny", [f"model.path={folder}", "model.init=pretrained"]).job
    with pytest.raises(UserError, match=r"copy it to the cluster yourself.*model.path=PATH"):
        remote.plan_upload(job, "hpc")


def test_a_refused_login_says_how_to_open_a_master_connection():
    err = remote._connection_error(remote.Cluster("hpc", "login"), "ana@login: Permission denied (keyboard-interactive).")
    assert "second factor" in err.problems[0] and "ssh -fNM login" in err.hint and "ControlPersist" in err.hint


def test_a_site_template_on_this_machine_travels_with_the_job(tmp_path):
    from launcher import paths
    from launcher.config import resolve

    template = tmp_path / "site.sbatch.j2"
    template.write_text((paths.templates_dir() / "sbatch.sh.j2").read_text())
    job = resolve("tiny", [f"slurm.template={template}"]).job
    upload = remote.plan_upload(job, "hpc")
    assert upload.files == {"files/slurm.template-site.sbatch.j2": template}
    assert upload.config["slurm"]["template"] == f"{remote.UPLOAD_MARK}/files/slurm.template-site.sbatch.j2"


@pytest.mark.parametrize("command", ["'/opt/ft venv/bin/ft", 'ft "--x', "ft \\", 42, ["ft"]])
def test_an_ft_command_a_shell_cannot_read_is_named_before_any_connection(tmp_path, command):
    write_config(tmp_path, {"hpc": {"host": "login.example.org", "ft": command}})
    with pytest.raises(UserError, match=r"clusters.hpc.ft must be .*quotes closed"):
        remote.cluster("hpc")


def test_an_unclosed_quote_in_ft_config_is_exit_2_on_the_command_line(tmp_path, ft):
    write_config(tmp_path, {"hpc": {"host": "login.example.org", "ft": "'/opt/ft"}})
    result = ft("jobs", "--cluster", "hpc")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "clusters.hpc.ft" in result.stderr


@pytest.mark.parametrize("timeout", [0, -1, "60", True, 10**9, None])
def test_a_timeout_that_is_not_seconds_is_named(tmp_path, timeout):
    write_config(tmp_path, {"hpc": {"host": "login.example.org", "timeout": timeout}})
    with pytest.raises(UserError, match=r"clusters.hpc.timeout must be the seconds"):
        remote.cluster("hpc")


def test_what_the_cluster_prints_is_shown_not_obeyed():
    assert remote.printable("a\x1b]52;c;eA==\x07b\x9bc\td\r\n") == "a^[]52;c;eA==^Gb<0x9b>c\td\r\n"
