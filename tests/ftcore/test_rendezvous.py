"""SLURM host lists read as `scontrol show hostnames` reads them, the port rule, and who each process is."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftcore import rendezvous
from ftcore.rendezvous import expand_hostlist


@pytest.mark.parametrize("text, hosts", [
    ("node1", ["node1"]),
    ("gpu[01-03,07],login-a1", ["gpu01", "gpu02", "gpu03", "gpu07", "login-a1"]),
    ("a[8-10]", ["a8", "a9", "a10"]),
    ("rack[1-2]-gpu[1-2]", ["rack1-gpu1", "rack1-gpu2", "rack2-gpu1", "rack2-gpu2"]),
    ("n[1,3],m2", ["n1", "n3", "m2"]),
])
def test_host_lists(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("bad", ["gpu[01-03", "gpu[a-b]", "gpu]["])
def test_unreadable_host_lists_are_refused(bad):
    with pytest.raises(ValueError):
        expand_hostlist(bad)


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="needs SLURM's scontrol")
@given(st.lists(st.tuples(st.sampled_from(["gpu", "n", "node-a"]), st.integers(0, 30), st.integers(0, 4),
                          st.integers(1, 3)), min_size=1, max_size=3))
def test_the_same_expansion_as_scontrol(groups):
    text = ",".join(f"{prefix}[{str(low).zfill(width)}-{str(low + span).zfill(width)}]"
                    for prefix, low, span, width in groups)
    result = subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True, text=True)
    assert expand_hostlist(text) == result.stdout.split()


def test_port_rule_stays_in_range():
    assert {rendezvous.master_port(j) for j in (0, 1, 19999, 20000, 10**9)} <= set(range(20000, 40000))


def test_detect_torchrun_slurm_and_single():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1"}
    assert rendezvous.detect(torchrun) == rendezvous.DistEnv(3, 4, 1, "n1", 1234, "torchrun")
    got = rendezvous.detect(slurm)
    assert (got.rank, got.world_size, got.local_rank, got.master_addr, got.launcher) == (5, 8, 1, "gpu07", "slurm")
    assert got.master_port == rendezvous.master_port(4242)
    exported = rendezvous.detect({**slurm, "MASTER_ADDR": "head", "MASTER_PORT": "29400"})
    assert (exported.master_addr, exported.master_port) == ("head", 29400)
    assert rendezvous.detect({**slurm, **torchrun}).launcher == "torchrun"  # torchrun's variables win
    assert rendezvous.detect({}) == rendezvous.DistEnv()
