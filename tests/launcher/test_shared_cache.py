"""A site-wide image or hub cache shared by a group: two real users of this machine, each
running `python -m launcher` (ft) as themselves against one setgid folder.

The first user's lock files must not shut the second out, and neither user's jobs may run
what the other put in the cache unless they say they trust that owner (or the SIF is not
the one ft pulled). Needs root (to make the users) and a system Python 3.11 the users can
run; skipped elsewhere.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from container_image import STANDIN, STOCK_URI
from other_users import entered_by

from launcher.apptainer import Apptainer

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
GROUP, ALICE, BOB = "ftshare", "ftshare1", "ftshare2"
# What the users import: this checkout's code, then this interpreter's packages.
PYTHONPATH = os.pathsep.join([str(REPO), *(p for p in sys.path if p.endswith("site-packages"))])


def _usable() -> str | None:
    if os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("useradd"):
        return "needs root, runuser and useradd"
    if not os.path.exists(SYSTEM_PYTHON):
        return f"needs {SYSTEM_PYTHON}"
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    return None if version == str(sys.version_info[:2]) else f"{SYSTEM_PYTHON} is not Python {sys.version_info[:2]}"


pytestmark = pytest.mark.skipif(_usable() is not None, reason=_usable() or "")


@pytest.fixture(scope="module")
def users():
    """Two users in one group (made once; kept, like any account a CI machine has)."""
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
    for user in (ALICE, BOB):
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-M", "-N", "-g", GROUP, "-s", "/bin/sh", user], check=True)
    # The checkout may lie in a 0700 home: let them in for these tests only.
    with entered_by((ALICE, BOB), [Path(p) for p in PYTHONPATH.split(os.pathsep)]):
        yield ALICE, BOB


@pytest.fixture
def shared(site_cache, container_site):
    """`site_cache`, with the stand-in registry and the tiny model readable by both users."""
    subprocess.run(["chmod", "-R", "a+rX", str(container_site.root)], check=True)
    container_site.log.touch()
    os.chmod(container_site.log, 0o666)
    return site_cache


@pytest.fixture
def site_cache(users):
    """The site's setgid cache folder, and a private FT_HOME for each user."""
    root = Path(tempfile.mkdtemp(prefix="ft-shared-", dir="/srv"))
    os.chmod(root, 0o755)
    cache = root / "cache"
    cache.mkdir()
    shutil.chown(cache, group=GROUP)
    os.chmod(cache, 0o2775)
    for user in users:
        home = root / user
        home.mkdir()
        shutil.chown(home, user=user, group=GROUP)
    try:
        yield root, cache
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ft_as(user: str, root: Path, site, *args: str) -> subprocess.CompletedProcess:
    """`ft ARGS` run by `user` (umask 022, as a login shell has it), with this checkout's code."""
    env = {"PATH": f"{STANDIN}{os.pathsep}/usr/bin:/bin", "HOME": str(root / user), "FT_HOME": str(root / user / "ft"),
           "FT_CONFIG_DIR": str(root / user / "config"), "PYTHONPATH": PYTHONPATH,
           "FT_STANDIN_REGISTRY": str(site.registry), "FT_STANDIN_LOG": str(site.log)}
    return subprocess.run(["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                           "sh", "-c", 'umask 022 && exec "$@"', "sh", SYSTEM_PYTHON, "-m", "launcher", *args],
                          capture_output=True, text=True, cwd=root, timeout=600)


def test_a_group_shares_an_image_cache_and_runs_only_images_it_trusts(shared, container_site):
    root, cache = shared
    pull = ["image", "pull", STOCK_URI, "--runtime", "apptainer", "--cache-dir", str(cache)]
    first = ft_as(ALICE, root, container_site, *pull)
    assert first.returncode == 0, first.stderr
    sif = Path(first.stdout.strip())
    lock = cache / f".{sif.name}.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o664  # not cut back to 0644 by her umask
    assert sif.stat().st_gid == grp.getgrnam(GROUP).gr_gid  # the setgid folder gave it the group

    # Bob takes Alice's lock (before: "Permission denied"), then refuses her SIF until he trusts her.
    refused = ft_as(BOB, root, container_site, *pull)
    assert refused.returncode == 2, refused.stderr
    assert f"belongs to {ALICE}, not to you or an owner you trust" in refused.stderr, refused.stderr
    assert "container.trusted_owners" in refused.stderr and "Traceback" not in refused.stderr
    profile = root / BOB / "site.yaml"
    profile.write_text(f"container:\n  trusted_owners: ['group:{GROUP}']\n")
    trusted = ft_as(BOB, root, container_site, *pull, "--profile", str(profile))
    assert trusted.returncode == 0 and "was pulled before" in trusted.stderr, trusted.stderr
    assert len(container_site.calls("pull")) == 1

    # A SIF that is no longer what was pulled (its recorded sha256) is refused, trusted owner or not.
    subprocess.run(["runuser", "-u", ALICE, "--", "sh", "-c", f"printf x >> {sif}"], check=True)
    changed = ft_as(BOB, root, container_site, *pull, "--profile", str(profile))
    assert changed.returncode == 2 and "is not the image ft pulled: its sha256" in changed.stderr, changed.stderr

    # What Bob plants under another image's name, Alice's jobs do not run.
    other = "docker://ft-test/stock:planted"
    subprocess.run(["runuser", "-u", BOB, "--", "cp", str(container_site.image), str(cache / Apptainer().cached_name(other))],
                   check=True)
    planted = ft_as(ALICE, root, container_site, "image", "pull", other, "--runtime", "apptainer",
                    "--cache-dir", str(cache))
    assert planted.returncode == 2 and f"belongs to {BOB}" in planted.stderr, planted.stderr


def test_a_group_takes_turns_on_the_stage_lock(site_cache):
    """`ft stage`'s lock per repository, taken by one user and then the other."""
    root, cache = site_cache
    take = ("import sys; from pathlib import Path; from launcher import stage\n"
            "with stage._locked(Path(sys.argv[1]), 'models--org--tiny'):\n    print('locked')")
    for user in (ALICE, BOB):
        result = subprocess.run(["runuser", "-u", user, "--", "env", f"PYTHONPATH={PYTHONPATH}",
                                 "sh", "-c", 'umask 022 && exec "$@"', "sh", SYSTEM_PYTHON, "-c", take, str(cache)],
                                capture_output=True, text=True, cwd=root, timeout=60)
        assert result.returncode == 0 and result.stdout == "locked\n", (user, result.stderr)
    assert stat.S_IMODE((cache / ".locks" / "ft-stage-models--org--tiny.lock").stat().st_mode) == 0o664
    assert (cache / ".locks").stat().st_mode & 0o070 == 0o070  # made group-writable in the setgid cache


def test_a_hub_snapshot_someone_else_put_in_the_cache_is_refused(shared, container_site):
    root, cache = shared
    snapshot = cache / "models--org--tiny" / "snapshots" / ("0" * 40)
    subprocess.run(["runuser", "-u", ALICE, "--", "mkdir", "-p", str(snapshot)], check=True)
    subprocess.run(["runuser", "-u", ALICE, "--", "cp", str(container_site.model / "config.json"), str(snapshot)],
                   check=True)
    job = ["submit", "--factory", "tiny", "model.init=pretrained", "model.path=org/tiny",
           f"hub.cache_dir={cache}", "--dry-run"]
    warned = ft_as(BOB, root, container_site, *job)
    assert warned.returncode == 0, warned.stderr
    assert "model.path org/tiny (model) in the hub cache is refused" in warned.stderr
    assert f"belongs to {ALICE}" in warned.stderr and "hub.trusted_owners" in warned.stderr
    refused = ft_as(BOB, root, container_site, *job[:-1], "--executor", "local", "--yes")
    assert refused.returncode == 2 and "in the hub cache is refused" in refused.stderr, refused.stderr
    assert not (root / BOB / "ft" / "jobs").exists() or len(list((root / BOB / "ft" / "jobs").iterdir())) == 1
    trusted = ft_as(BOB, root, container_site, *job, f"hub.trusted_owners=[{ALICE}]")
    assert trusted.returncode == 0 and "refused" not in trusted.stderr, trusted.stderr


def test_the_users_enter_a_checkout_in_a_closed_home_only_while_the_tests_need_it(users):
    """A clone in a 0700 home, with a space in its path: ALICE reads inside it only within `entered_by`,
    and exactly the ACL entries it added are gone afterwards."""
    home = Path(tempfile.mkdtemp(prefix="ft-closed-home-", dir="/srv"))
    try:
        os.chmod(home, 0o700)
        checkout = home / "my clones" / "ft"
        checkout.mkdir(parents=True)
        (checkout / "code.py").write_text("x = 1\n")
        readable = ["runuser", "-u", ALICE, "--", "test", "-r", str(checkout / "code.py")]
        assert subprocess.run(readable).returncode != 0
        with entered_by([ALICE], [checkout]):
            assert subprocess.run(readable).returncode == 0
            # Enter, never list: the home's other files stay hidden.
            assert subprocess.run(["runuser", "-u", ALICE, "--", "ls", str(home)], capture_output=True).returncode != 0
        assert subprocess.run(readable).returncode != 0
        assert f"user:{ALICE}" not in subprocess.run(["getfacl", "-p", str(home)], capture_output=True,
                                                     text=True).stdout
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_lock_link_planted_in_the_cache_never_changes_the_file_behind_it(shared, container_site):
    root, cache = shared
    secret = root / ALICE / "notes.txt"
    subprocess.run(["runuser", "-u", ALICE, "--", "sh", "-c", f"umask 077 && echo mine > {secret}"], check=True)
    lock = cache / f".{Apptainer().cached_name(STOCK_URI)}.lock"
    subprocess.run(["runuser", "-u", BOB, "--", "ln", "-s", str(secret), str(lock)], check=True)
    pull = ft_as(ALICE, root, container_site, "image", "pull", STOCK_URI, "--runtime", "apptainer", "--cache-dir", str(cache))
    assert pull.returncode == 2 and "is a symbolic link" in pull.stderr and "Traceback" not in pull.stderr, pull.stderr
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_text() == "mine\n"
    assert not container_site.calls("pull")


def test_a_cached_sif_without_its_recorded_sha256_is_not_verified_and_refused(shared, container_site):
    root, cache = shared
    pull = ["image", "pull", STOCK_URI, "--runtime", "apptainer", "--cache-dir", str(cache)]
    first = ft_as(ALICE, root, container_site, *pull)
    assert first.returncode == 0, first.stderr
    sif = Path(first.stdout.strip())
    assert ft_as(ALICE, root, container_site, *pull).returncode == 0  # verified once, remembered
    subprocess.run(["runuser", "-u", ALICE, "--", "sh", "-c", f"printf x >> {sif} && rm {cache}/.{sif.name}.sha256"],
                   check=True)
    again = ft_as(ALICE, root, container_site, *pull)
    assert again.returncode == 2 and "has no sha256 recorded by the pull" in again.stderr, again.stderr
    assert "remove it and pull again" in again.stderr and "Traceback" not in again.stderr


def test_an_owner_without_a_name_is_trusted_the_way_the_hint_says(shared, container_site):
    root, cache = shared
    other = "docker://ft-test/stock:nameless"
    sif = cache / Apptainer().cached_name(other)
    shutil.copy(container_site.image, sif)
    (cache / f".{sif.name}.sha256").write_text(f"{hashlib.sha256(sif.read_bytes()).hexdigest()}  {sif.name}\n")
    for path in (sif, cache / f".{sif.name}.sha256"):
        os.chown(path, 61000, grp.getgrnam(GROUP).gr_gid)
        os.chmod(path, 0o644)
    pull = ["image", "pull", other, "--runtime", "apptainer", "--cache-dir", str(cache)]
    refused = ft_as(BOB, root, container_site, *pull)
    assert refused.returncode == 2 and "belongs to uid:61000" in refused.stderr, refused.stderr
    assert "add `uid:61000`" in refused.stderr
    profile = root / BOB / "site.yaml"
    profile.write_text("container:\n  trusted_owners: ['uid:61000']\n")
    trusted = ft_as(BOB, root, container_site, *pull, "--profile", str(profile))
    assert trusted.returncode == 0 and "was pulled before" in trusted.stderr, trusted.stderr
