"""Two trainer processes on this machine (gloo, torchrun-style variables) against one in-process run.

The same global batch must give the same losses whether it is split over one process or
two: FSDP2 for full SFT, data parallel for LoRA. The srun version lives with the SLURM tests.
"""

from __future__ import annotations

import signal
import time

import pytest

pytest.importorskip("torch")
import torch
from safetensors.torch import load_file
from trainer_helpers import (describe, finish, launch, read_metrics, save_tiny_model, start, tiny_job,
                             train_losses, validate, write_config)

from ftcore import exits, layout
from trainer.train import run

pytestmark = pytest.mark.train


def figures(job_dir, key):
    return [r[key] for r in read_metrics(job_dir) if key in r]


def preempt_rank_1(config, run_dir, steps: int, wait_s: int) -> tuple[int, list]:
    """Two ranks start; once one step is logged rank 1 alone gets SIGUSR1: both must checkpoint the
    same step and exit 75. Returns (the step they stopped at, the first run's results)."""
    procs = start(config, nprocs=2)
    deadline = time.time() + wait_s
    while not train_losses(run_dir) and time.time() < deadline and procs[1].poll() is None:
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGUSR1)
    results = finish(procs)
    assert [r.returncode for r in results] == [exits.REQUEUE, exits.REQUEUE], describe(results)
    stopped_at = max(train_losses(run_dir))
    assert stopped_at < steps
    return stopped_at, results


def requeued(config, stopped_at: int) -> list:
    """The requeued job: both ranks finish, resumed from the step they stopped at."""
    results = launch(config, nprocs=2)
    assert [r.returncode for r in results] == [0, 0], describe(results)
    assert f"at step {stopped_at}" in results[0].stdout
    return results


def test_fsdp2_sft_on_two_processes_matches_one(tmp_path):
    from transformers import AutoModelForCausalLM

    # Two processes also take the meta-device path (each reads only its own rows of the
    # safetensors files) and recompute activations; neither may change a single number.
    pretrained = {"init": "pretrained", "path": str(save_tiny_model(tmp_path / "base")), "config": {}}
    two = tiny_job(peft=None, model={**pretrained, "meta_init": True, "activation_checkpointing": True},
                   trainer={"devices": 2, "max_steps": 3}, data={"micro_batch_size": 2})
    one = tiny_job(peft=None, model=pretrained, trainer={"max_steps": 3}, data={"micro_batch_size": 4})
    assert validate(two).grad_accum_steps == validate(one).grad_accum_steps == 2

    results = launch(write_config(tmp_path / "two", two), nprocs=2)
    assert [r.returncode for r in results] == [0, 0], describe(results)
    assert "2 process(es) (torchrun)" in results[0].stdout and results[1].stdout == ""  # only rank 0 logs
    assert run(validate(one), tmp_path / "one") == exits.OK

    for key in ("loss", "grad_norm", "val_loss"):
        assert figures(tmp_path / "two", key) == pytest.approx(figures(tmp_path / "one", key), rel=1e-5), key
    loaded = [AutoModelForCausalLM.from_pretrained(layout.step_dir(tmp_path / d / layout.CHECKPOINTS, 3)) for d in ("two", "one")]
    for (name, a), b in zip(loaded[0].state_dict().items(), loaded[1].state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    # The sharded state is data: a JSON index over each rank's raw bytes, every tensor in one chunk per rank.
    from trainer.dcp_data import read_index

    dcp_dir = layout.step_dir(tmp_path / "two" / layout.CHECKPOINTS, 3) / layout.TRAINING_STATE / layout.DCP
    assert not (dcp_dir / layout.LEGACY_DCP_INDEX).exists()
    index = read_index(dcp_dir)
    assert {span.file for span in index.spans.values()} == {"__0_0.distcp", "__1_0.distcp"}
    sharded = [md for key, md in index.metadata.state_dict_metadata.items() if key.startswith("model.") and hasattr(md, "chunks")]
    assert sharded and all(len(md.chunks) == 2 for md in sharded if md.size[0] >= 2)
    # One process reads both ranks' shards back (DCP's resharding through ft's reader): the model
    # ft's after-training commands rebuild from the resume state is the one the run exported.
    from trainer.checkpointing import write_hf_from_state

    write_hf_from_state(dcp_dir.parent.parent, validate(two), None, tmp_path / "rebuilt")
    exported = load_file(dcp_dir.parent.parent / "model.safetensors")
    rebuilt = load_file(tmp_path / "rebuilt" / "model.safetensors")
    assert rebuilt.keys() == exported.keys()
    for name, tensor in exported.items():
        torch.testing.assert_close(rebuilt[name], tensor, rtol=0, atol=0, msg=name)
    # And the other way: one process's checkpoint (one chunk per tensor) resumed on two ranks, each
    # reading its rows out of the chunk.
    import shutil

    shutil.copytree(tmp_path / "one" / layout.CHECKPOINTS, tmp_path / "grown" / layout.CHECKPOINTS)
    grown = {**two, "trainer": {**two["trainer"], "max_steps": 4}}
    results = launch(write_config(tmp_path / "grown", grown), nprocs=2)
    assert [r.returncode for r in results] == [0, 0], describe(results)
    assert "at step 3" in results[0].stdout and layout.newest_complete(tmp_path / "grown").name == "step-000004"


def test_lora_data_parallel_matches_one_process_and_survives_preemption(tmp_path):
    """Rank 1 alone gets SIGUSR1: both ranks checkpoint the same step and exit 75; requeued, they finish."""
    steps = 80
    two = tiny_job(trainer={"devices": 2, "max_steps": steps, "val_every_steps": 40}, data={"micro_batch_size": 2})
    one = tiny_job(trainer={"max_steps": steps, "val_every_steps": 40}, data={"micro_batch_size": 4})
    config = write_config(tmp_path / "two", two)

    stopped_at, _ = preempt_rank_1(config, tmp_path / "two", steps, wait_s=120)
    assert layout.newest_complete(tmp_path / "two").name == f"step-{stopped_at:06d}"
    requeued(config, stopped_at)

    assert run(validate(one), tmp_path / "one") == exits.OK
    for key in ("loss", "grad_norm", "val_loss"):
        assert figures(tmp_path / "two", key) == pytest.approx(figures(tmp_path / "one", key), rel=1e-4), key
    adapters = [load_file(layout.step_dir(tmp_path / d / layout.CHECKPOINTS, steps) / "adapter_model.safetensors") for d in ("two", "one")]
    for name in adapters[0]:
        torch.testing.assert_close(adapters[0][name], adapters[1][name], atol=1e-4, rtol=1e-3, msg=name)


def test_lora_under_fsdp2_on_two_processes_matches_one(tmp_path):
    """The 405B layout: a frozen base sharded with the adapters, filled from files on the meta path."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = save_tiny_model(tmp_path / "base")
    pretrained = {"init": "pretrained", "path": str(base), "config": {}, "meta_init": True}
    two = tiny_job(model={**pretrained, "activation_checkpointing": True}, trainer={"devices": 2, "max_steps": 3, "strategy": "fsdp2"},
                   data={"micro_batch_size": 2})
    one = tiny_job(model=pretrained, trainer={"max_steps": 3, "strategy": "fsdp2"}, data={"micro_batch_size": 4})
    results = launch(write_config(tmp_path / "two", two), nprocs=2)
    assert [r.returncode for r in results] == [0, 0], describe(results)
    assert run(validate(one), tmp_path / "one") == exits.OK

    for key in ("loss", "grad_norm", "val_loss"):
        assert figures(tmp_path / "two", key) == pytest.approx(figures(tmp_path / "one", key), rel=1e-5), key
    final = layout.step_dir(tmp_path / "two" / layout.CHECKPOINTS, 3)
    adapters = [load_file(layout.step_dir(tmp_path / d / layout.CHECKPOINTS, 3) / "adapter_model.safetensors") for d in ("two", "one")]
    assert adapters[0].keys() == adapters[1].keys() and all("lora_" in k for k in adapters[0])
    for name in adapters[0]:
        torch.testing.assert_close(adapters[0][name], adapters[1][name], atol=1e-5, rtol=1e-4, msg=name)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final)


COUNTING_TRAINER = """
import os, sys
import trainer.data as data

original = data.tokenize_all

def counted(*args, **kwargs):  # one line per tokenization, naming the rank that did it
    with open(os.environ["FT_TEST_TOKENIZED"], "a") as f:
        f.write(os.environ["RANK"] + "\\n")
    return original(*args, **kwargs)

data.tokenize_all = counted
from trainer.__main__ import main
sys.exit(main(["--config", sys.argv[1]]))
"""


def test_a_two_rank_job_tokenizes_once_and_a_resubmission_not_at_all(tmp_path):
    import subprocess
    import sys

    from trainer_helpers import REPO, clean_env, free_port

    script = tmp_path / "counting_trainer.py"
    script.write_text(COUNTING_TRAINER)
    tokenized = tmp_path / "tokenized.txt"
    config = write_config(tmp_path / "job", tiny_job(trainer={"devices": 2, "max_steps": 1}, data={"micro_batch_size": 2}))

    def two_ranks():
        port = str(free_port())
        procs = [subprocess.Popen([sys.executable, str(script), str(config)], cwd=REPO, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=clean_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                                MASTER_PORT=port, FT_TEST_TOKENIZED=str(tokenized)))
                 for r in range(2)]
        results = finish(procs)
        assert [r.returncode for r in results] == [0, 0], describe(results)
        return results

    two_ranks()
    assert tokenized.read_text().split() == ["0"]  # rank 0 only; rank 1 read its file
    assert len(list((tmp_path / "job" / layout.TOKEN_CACHE).glob("tokens-*.pt"))) == 1
    again = two_ranks()  # a resubmission (nothing left to train, but the data are loaded)
    assert tokenized.read_text().split() == ["0"]
    assert "tokenized once, read from" in again[0].stdout


def test_full_dpo_under_fsdp2_on_two_processes_matches_one_and_resumes_against_the_same_reference(tmp_path):
    """DPO with full weights: the policy and its frozen reference copy both sharded over two ranks (filled
    from the files on the meta path), preempted and requeued; the resumed run rebuilds the reference from
    the base, not from the checkpoint, so every step equals an uninterrupted one-process run."""
    steps = 8
    pretrained = {"init": "pretrained", "path": str(save_tiny_model(tmp_path / "base")), "config": {}}
    dpo = {"objective": {"name": "dpo", "beta": 0.1}, "optim": {"lr": 3e-3}}
    prefs = {"path": "ft:tiny_prefs.jsonl", "format": "preference", "max_seq_length": 64, "val_fraction": 0.05}
    two = tiny_job(dpo, peft=None, model={**pretrained, "meta_init": True}, trainer={"devices": 2, "max_steps": steps},
                   data={**prefs, "micro_batch_size": 2})
    one = tiny_job(dpo, peft=None, model=pretrained, trainer={"max_steps": steps}, data={**prefs, "micro_batch_size": 4})
    config = write_config(tmp_path / "two", two)

    stopped_at, results = preempt_rank_1(config, tmp_path / "two", steps, wait_s=180)
    assert "DPO reference: a frozen copy of the base in fp32, sharded like the policy" in results[0].stdout
    requeued(config, stopped_at)

    assert run(validate(one), tmp_path / "one") == exits.OK
    assert figures(tmp_path / "one", "loss")[0] == pytest.approx(0.6931472, abs=1e-6)
    for key in ("loss", "grad_norm", "rewards/chosen", "rewards/margins", "logps/rejected", "val_loss",
                "val_rewards/margins"):
        assert figures(tmp_path / "two", key) == pytest.approx(figures(tmp_path / "one", key), rel=1e-4, abs=1e-6), key


def test_lora_dpo_under_fsdp2_on_two_processes_matches_one(tmp_path):
    """LoRA DPO sharded with FSDP2: each micro batch gathers the layers twice, once with the adapters
    switched off (the reference, no_grad) and once with them (the policy)."""
    dpo = {"objective": {"name": "dpo"}, "optim": {"lr": 3e-3},
           "data": {"path": "ft:tiny_prefs.jsonl", "format": "preference", "max_seq_length": 64}}
    two = tiny_job(dpo, trainer={"devices": 2, "max_steps": 3, "strategy": "fsdp2"}, data={"micro_batch_size": 2})
    one = tiny_job(dpo, trainer={"max_steps": 3, "strategy": "fsdp2"}, data={"micro_batch_size": 4})
    results = launch(write_config(tmp_path / "two", two), nprocs=2)
    assert [r.returncode for r in results] == [0, 0], describe(results)
    assert "DPO reference: the base with the adapters switched off (no copy)" in results[0].stdout
    assert run(validate(one), tmp_path / "one") == exits.OK
    assert figures(tmp_path / "two", "loss")[0] == pytest.approx(0.6931472, abs=1e-6)
    for key in ("loss", "grad_norm", "rewards/margins", "logps/chosen", "val_rewards/accuracies"):
        # (rewards are beta × differences of nearly equal log-probabilities: held to 1e-6 absolute)
        assert figures(tmp_path / "two", key) == pytest.approx(figures(tmp_path / "one", key), rel=1e-5, abs=1e-6), key
