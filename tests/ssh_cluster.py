"""pytest helpers for `--cluster` tests: a real OpenSSH server on loopback (scripts/ssh-up.sh)
and a second local user, ftremote, whose login node is this host's SLURM cluster.

The "laptop" is the test process (root); the "cluster" is `ssh ftremote@127.0.0.1`, which runs
ft from this same Python (made readable to ftremote by ssh-up.sh) with its own FT_HOME. Hosts,
each an alias of the ssh_config the fixture writes (ft reads it through $FT_SSH_CONFIG):

    ft-test        port 2222, the key is enough; ControlMaster auto (one login, many commands)
    ft-test-plain  port 2222, no ControlMaster: every command logs in again
    ft-test-2fa    port 2223, the key and a password (a second factor): ft must not prompt
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SSH_UP = REPO / "scripts" / "ssh-up.sh"
KEYS = Path("/etc/ft-test-ssh")
SSHD_LOG = Path("/var/log/ft-test-sshd.log")
USER = "ftremote"
PORT = 2222
REMOTE_HOME = Path("/home") / USER


def _config(control_dir: Path) -> str:
    common = (f"    HostName 127.0.0.1\n    User {USER}\n    IdentityFile {KEYS / 'id_ed25519'}\n"
              f"    IdentitiesOnly yes\n    HostKeyAlias ft-test-sshd\n"
              f"    UserKnownHostsFile {KEYS / 'known_hosts'}\n    StrictHostKeyChecking yes\n")
    master = f"    ControlMaster auto\n    ControlPath {control_dir}/%C\n    ControlPersist 120\n"
    return (f"Host ft-test\n    Port {PORT}\n{common}{master}\n"
            f"Host ft-test-plain\n    Port {PORT}\n{common}    ControlMaster no\n    ControlPath none\n\n"
            f"Host ft-test-2fa\n    Port {PORT + 1}\n{common}{master}")


def _can_log_in(config: Path) -> bool:
    try:
        return subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "ft-test-plain", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _unavailable(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why} (.ci/run starts sshd with scripts/ssh-up.sh)")
    pytest.skip(why)


@dataclass
class SshCluster:
    name: str  # the `--cluster` name (an entry of ft's config)
    ft_home: Path  # FT_HOME on the cluster (ftremote's)
    ssh_config: Path

    def ssh(self, *words: str, host: str = "ft-test") -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", host, "--", *words],
                              capture_output=True, text=True, timeout=60)

    @staticmethod
    def logins() -> int:
        """Authentications sshd accepted so far (its VERBOSE log: one line each)."""
        try:
            text = SSHD_LOG.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if f"Accepted publickey for {USER}" in line)


@pytest.fixture
def ssh_cluster(tmp_path, monkeypatch) -> SshCluster:
    """ft's config names three clusters on the local sshd; the remote FT_HOME is this test's own."""
    if shutil.which("ssh") is None or not Path("/usr/sbin/sshd").exists():
        _unavailable("OpenSSH (ssh, sshd) is not installed")
    control = Path(tempfile.mkdtemp(prefix="ftssh-", dir="/tmp"))  # a socket path must be short
    config = control / "ssh_config"
    config.write_text(_config(control))
    if not _can_log_in(config):
        if os.geteuid() != 0:
            _unavailable("the test sshd is not running and only root can start it (scripts/ssh-up.sh)")
        grants = [str(Path(sys.executable).resolve()), sys.prefix, str(REPO), *(p for p in sys.path if os.path.isdir(p))]
        started = subprocess.run(["bash", str(SSH_UP), *dict.fromkeys(grants)], capture_output=True, text=True)
        if started.returncode != 0 or not _can_log_in(config):
            _unavailable(f"scripts/ssh-up.sh failed: {started.stdout[-2000:]}{started.stderr[-2000:]}")
    monkeypatch.setenv("FT_SSH_CONFIG", str(config))
    # Named by the pytest session too: two sessions running the same test share ftremote.
    ft_home = REMOTE_HOME / "ft-tests" / f"{tmp_path.parent.name}-{tmp_path.name}"
    remote_ft = shlex.join([str(Path(sys.executable)), "-m", "launcher"])  # shell words, as clusters.NAME.ft
    entries = {name: {"host": host, "ft": remote_ft, "ft_home": str(ft_home)}
               for name, host in (("ftc", "ft-test"), ("ftc-plain", "ft-test-plain"), ("ftc-2fa", "ft-test-2fa"))}
    config_dir = Path(os.environ["FT_CONFIG_DIR"])
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.yaml").write_text(yaml.safe_dump({"clusters": entries}))
    cluster = SshCluster("ftc", ft_home, config)
    probe = cluster.ssh(*shlex.split(remote_ft), "--version")
    if probe.returncode != 0:
        _unavailable(f"{USER} cannot run ft ({remote_ft}): {probe.stderr.strip()[-500:]}")
    yield cluster
    cluster.ssh("rm", "-rf", "--", str(ft_home))
    subprocess.run(["ssh", "-F", str(config), "-O", "exit", "ft-test"], capture_output=True, timeout=30)
    shutil.rmtree(control, ignore_errors=True)
