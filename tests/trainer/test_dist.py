"""trainer.dist: where am I: torchrun, SLURM, alone."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from ftcore import rendezvous
from trainer import dist


def test_detect_torchrun_slurm_and_single():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1"}
    assert dist.detect(torchrun) == dist.DistEnv(3, 4, 1, "n1", 1234, "torchrun")
    got = dist.detect(slurm)
    assert (got.rank, got.world_size, got.local_rank, got.master_addr, got.launcher) == (5, 8, 1, "gpu07", "slurm")
    assert got.master_port == rendezvous.master_port(4242)
    exported = dist.detect({**slurm, "MASTER_ADDR": "head", "MASTER_PORT": "29400"})
    assert (exported.master_addr, exported.master_port) == ("head", 29400)
    assert dist.detect({**slurm, **torchrun}).launcher == "torchrun"  # torchrun's variables win
    assert dist.detect({}) == dist.DistEnv()
