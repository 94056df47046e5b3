"""Training a tiny random Llama on CPU, in this process: learning, accumulation, checkpoints, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

pytest.importorskip("torch")
from safetensors.torch import load_file
from trainer_helpers import assert_same_tensors, read_metrics, tiny_job, train, train_losses, validate

from ftcore import exits, layout
from ftcore.errors import UserError
from trainer import dist
from ftcore.formats import FORMATS
from trainer.records import read_records
from trainer.train import lr_at, preflight

pytestmark = pytest.mark.train

# LoRA can only move a frozen random model far when its output head is adapted too and the
# random weights are not tiny: this setup memorises 32 records in ~40 steps.
LEARNABLE = dict(
    model={"config": {"initializer_range": 0.2}},
    peft={"target_modules": ["*_proj", "lm_head"]},
    data={"limit_samples": 32, "val_fraction": 0},
    optim={"lr": 1e-2, "lr_scheduler": {"name": "constant", "warmup_steps": 0}},
)


def adapter(job_dir, step):
    return load_file(layout.step_dir(job_dir / layout.CHECKPOINTS, step) / "adapter_model.safetensors")


def test_lora_learns_and_the_adapter_loads_with_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = tiny_job(LEARNABLE, trainer={"max_steps": 40, "log_every_steps": 1})
    assert train(tmp_path, raw) == exits.OK
    losses = train_losses(tmp_path)
    assert len(losses) == 40
    assert sum(losses[s] for s in range(36, 41)) / 5 < 0.1 * losses[1]

    final = layout.step_dir(tmp_path / layout.CHECKPOINTS, 40)
    assert all("lora_" in name for name in load_file(final / "adapter_model.safetensors"))  # adapters only
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "base_model").resolve())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    right = 0
    records = read_records("ft:tiny_qa.jsonl")[:8]  # limit_samples=32 trained on the first 32
    for record in records:
        prompt = FORMATS["squad"].prompt.format(**record.fields)
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        right += answer.strip() == record.fields["answers"]["text"][0]
    assert right >= 6, f"only {right}/8 memorised answers generated"


def test_micro_1_x_accum_4_equals_micro_4_x_accum_1(tmp_path):
    runs = {}
    for micro in (1, 4):
        raw = tiny_job(data={"global_batch_size": 4, "micro_batch_size": micro}, trainer={"max_steps": 3})
        assert validate(raw).grad_accum_steps == 4 // micro
        assert train(tmp_path / f"m{micro}", raw) == exits.OK
        runs[micro] = ([r for r in read_metrics(tmp_path / f"m{micro}") if "loss" in r], adapter(tmp_path / f"m{micro}", 3))
    (m1, w1), (m4, w4) = runs[1], runs[4]
    for key in ("loss", "grad_norm"):  # grad_norm: the whole gradient agrees, not just the loss
        assert [r[key] for r in m1] == pytest.approx([r[key] for r in m4], rel=1e-5)
    assert_same_tensors(w1, w4, exact=False)


@pytest.mark.parametrize("option", ["group_by_length", "padding_free"])
@pytest.mark.parametrize("method", ["lora", "sft"])
def test_batch_layouts_train_like_the_plain_padded_order(tmp_path, method, option):
    """Grouping by length changes which samples share a micro batch, padding-free collation how
    they are laid out; neither changes the step's loss or gradient."""
    lengths = [len(s) for s in _tiny_samples()]
    assert len(set(lengths)) > 4  # variable lengths, or this test would show nothing
    runs = {}
    for on in (False, True):
        layout = {"group_by_length": False, "padding_free": False, option: on}
        raw = tiny_job(data={"global_batch_size": 8, "micro_batch_size": 2, **layout},
                       trainer={"max_steps": 3}, peft=None if method == "sft" else {})
        assert train(tmp_path / str(on), raw) == exits.OK
        runs[on] = [r for r in read_metrics(tmp_path / str(on)) if "loss" in r or "val_loss" in r]
    for key in ("loss", "grad_norm", "val_loss"):
        plain = [r[key] for r in runs[False] if key in r]
        assert plain and [r[key] for r in runs[True] if key in r] == pytest.approx(plain, rel=1e-5)


@pytest.mark.compile
@pytest.mark.timeout(1200)  # inductor compiles C++ on the CPU: minutes on a busy machine
def test_compiled_layers_train_like_the_eager_ones_and_the_log_names_graph_breaks(tmp_path, capsys):
    """trainer.compile=true under FSDP2 (full SFT): the same losses and gradient norms. On a CPU
    padding-free attention runs per example, eagerly (torch.compiler.disable): a graph break in
    every layer, which the log must name instead of hiding."""
    runs = {}
    for compiled in (False, True):
        raw = tiny_job(data={"global_batch_size": 8, "micro_batch_size": 4}, trainer={"max_steps": 3, "compile": compiled},
                       peft=None)
        assert train(tmp_path / str(compiled), raw) == exits.OK
        runs[compiled] = [r for r in read_metrics(tmp_path / str(compiled)) if "loss" in r]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in runs[True]] == pytest.approx([r[key] for r in runs[False]], rel=1e-4)
    out = capsys.readouterr().out
    breaks = [line for line in out.splitlines() if line.startswith("compile: ")]
    assert len(breaks) == 1 and "graph break(s) in the decoder layers" in breaks[0], out[-2000:]
    assert "torch.compiler.disable" in breaks[0] or "skip" in breaks[0].lower(), breaks[0]


def test_graph_breaks_are_counted_from_dynamo_itself():
    import torch._dynamo
    from torch._dynamo.utils import counters

    from trainer.model import graph_breaks

    counters.clear()

    def clean(x):
        return x * 2 + 1

    def broken(x):
        x = x * 2
        torch._dynamo.graph_break()
        return x + 1

    torch.compile(clean, backend="eager", fullgraph=True)(torch.ones(3))
    assert graph_breaks().endswith("no graph breaks")
    torch.compile(broken, backend="eager")(torch.ones(3))
    assert "compile: 1 graph break(s)" in graph_breaks() and "graph_break()" in graph_breaks()


def _tiny_samples():
    from trainer.samples import Stats, tokenize
    from trainer_helpers import tiny_tokenizer

    return tokenize(read_records("ft:tiny_qa.jsonl"), "squad", tiny_tokenizer(), 64, None, Stats())


@pytest.mark.parametrize("method, signum", [("lora", signal.SIGUSR1), ("sft", signal.SIGTERM)], ids=["lora-USR1", "sft-TERM"])
def test_preemption_checkpoints_exits_75_and_resumes_exactly(tmp_path, method, signum):
    """Preempted at step 3 and requeued == never interrupted: same losses, bit-identical weights."""
    sections = dict(trainer={"max_steps": 6}, peft={"dropout": 0.1})  # dropout: the RNG must resume too
    if method == "sft":
        sections.update(peft=None, optim={"lr": 3e-3})
    raw = tiny_job(**sections)

    assert train(tmp_path / "straight", raw) == exits.OK

    def preempt(record):
        if record["step"] == 2:
            os.kill(os.getpid(), signum)  # arrives mid-run; honoured after the next step

    job = tmp_path / "preempted"
    assert train(job, raw, on_step=preempt) == exits.REQUEUE
    assert layout.newest_complete(job).name == "step-000003"
    assert (job / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert max(train_losses(job)) == 3
    assert train(job, raw) == exits.OK

    assert train_losses(job) == train_losses(tmp_path / "straight")
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    final = [load_file(layout.step_dir(d / layout.CHECKPOINTS, 6) / weights) for d in (job, tmp_path / "straight")]
    assert_same_tensors(*final)
    state = json.loads((layout.step_dir(job / layout.CHECKPOINTS, 6) / "ft_state" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["data_position"] == {"epoch": 0, "index": 48}


def test_stop_at_max_steps_then_continue_with_more_steps(tmp_path):
    raw = tiny_job(optim={"lr_scheduler": {"name": "constant"}}, trainer={"max_steps": 5, "val_every_steps": 2})
    assert train(tmp_path / "straight", raw) == exits.OK
    short = tiny_job(optim={"lr_scheduler": {"name": "constant"}}, trainer={"max_steps": 2, "val_every_steps": 2})
    assert train(tmp_path / "two_runs", short) == exits.OK
    assert train(tmp_path / "two_runs", raw) == exits.OK
    assert train_losses(tmp_path / "two_runs") == train_losses(tmp_path / "straight")
    assert_same_tensors(adapter(tmp_path / "two_runs", 5), adapter(tmp_path / "straight", 5))
    val_steps = [r["step"] for r in read_metrics(tmp_path / "straight") if "val_loss" in r]
    assert val_steps == [2, 4, 5]


def test_progress_and_the_end_summary_span_a_resumed_run(tmp_path, capsys):
    """Each step says how far (of the total) and how long; the end sums the run up, over resumes."""
    first = tiny_job(trainer={"max_steps": 2, "val_every_steps": 2})
    assert train(tmp_path, first) == exits.OK
    assert train(tmp_path, tiny_job(trainer={"max_steps": 5, "val_every_steps": 2})) == exits.OK
    records = read_metrics(tmp_path)
    steps = [r for r in records if "loss" in r]
    assert [(r["step"], r["total_steps"]) for r in steps] == [(1, 2), (2, 2), (3, 5), (4, 5), (5, 5)]
    assert all(r["elapsed_s"] >= 0 and r["remaining_s"] >= 0 for r in steps)
    (end,) = [r for r in records if r.get("end")]  # the first run's summary was dropped on resume
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [2, 4, 5] and end["final_val_loss"] == val[5] and end["best_val_loss"] == min(val.values())
    assert end["step"] == 5 and end["checkpoint"].endswith("step-000005") and records[-1] == end
    printed = capsys.readouterr().out
    assert "step 4/5 (80%) | epoch 0 | loss" in printed and " elapsed, " in printed and " left" in printed
    assert "done: 5 steps in " in printed and f"best {end['best_val_loss']:.4f} (step {end['best_step']})" in printed


def test_half_written_checkpoints_are_ignored(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    raw = tiny_job(trainer={"max_steps": 4}, checkpoint={"every_steps": 2, "keep_last": None})
    assert train(tmp_path, raw) == exits.OK
    assert [s for s, _ in layout.complete_checkpoints(root)] == [2, 4]

    # A save killed after the rename would need the marker; one killed before it is a .tmp- folder.
    shutil.copytree(root / "step-000004", root / "step-000006")
    (root / "step-000006" / "ft_state" / "COMPLETE").unlink()
    shutil.copytree(root / "step-000004", root / ".tmp-step-000008")
    assert layout.newest_complete(tmp_path).name == "step-000004"

    capsys.readouterr()
    raw = tiny_job(trainer={"max_steps": 6}, checkpoint={"every_steps": 2, "keep_last": 2})
    assert train(tmp_path, raw) == exits.OK
    assert f"resumed from {root / 'step-000004'} at step 4" in capsys.readouterr().out
    assert [s for s, _ in layout.complete_checkpoints(root)] == [4, 6]  # keep_last pruned step 2
    assert not (root / ".tmp-step-000008").exists()
    assert (root / "latest").read_text().strip() == "step-000006"
    assert sorted(train_losses(tmp_path)) == [1, 2, 3, 4, 5, 6]


def test_resume_with_changed_data_or_without_auto_is_refused(tmp_path):
    assert train(tmp_path, tiny_job(trainer={"max_steps": 1})) == exits.OK
    with pytest.raises(UserError, match="cannot resume at the same batch"):
        train(tmp_path, tiny_job(trainer={"max_steps": 2}, data={"limit_samples": 100}))
    with pytest.raises(UserError, match="resume.auto=false"):
        train(tmp_path, tiny_job(trainer={"max_steps": 2}, resume={"auto": False}))


# --- pure pieces: the schedule, and what only the machine can check ---------------------------


def _optim(name, warmup=0, min_lr=0.0):
    from ftcore.schema import OptimConfig

    return OptimConfig(lr=1.0, lr_scheduler={"name": name, "warmup_steps": warmup, "min_lr": min_lr})


def test_warmup_then_decay_to_min_lr():
    cosine = _optim("cosine", warmup=4, min_lr=0.1)
    assert [lr_at(s, 20, cosine) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert lr_at(5, 20, cosine) == 1.0 and lr_at(20, 20, cosine) == pytest.approx(0.1)
    mids = [lr_at(s, 20, cosine) for s in range(5, 21)]
    assert mids == sorted(mids, reverse=True)
    assert lr_at(11, 21, _optim("linear")) == pytest.approx(0.5)
    assert {lr_at(s, 10, _optim("constant", warmup=2)) for s in range(2, 11)} == {1.0}


def test_config_only_rules_are_the_schemas_and_all_are_reported():
    from ftcore.schema import validate as schema_validate

    with pytest.raises(UserError) as e:
        schema_validate(tiny_job(peft=None, model={"quantization": "nf4", "cpu_offload": True, "meta_init": True},
                                 trainer={"strategy": "ddp"}))
    for problem in ("nf4 (QLoRA) quantizes a frozen base: it needs peft=lora", "cpu_offload moves FSDP2 shards",
                    "a CPU job (trainer.accelerator=cpu) has none to free", "meta_init fills FSDP2 shards"):
        assert problem in str(e.value)


def test_preflight_checks_what_only_the_machine_knows():
    job = validate(tiny_job(trainer={"devices": 2}, model={"path": "/nowhere/model", "init": "pretrained"},
                            data={"global_batch_size": 8}))
    with pytest.raises(UserError) as e:
        preflight(job, dist.DistEnv())
    assert "= 2 processes but this is one process with no scheduler" in str(e.value)
    assert "model.path /nowhere/model does not exist" in str(e.value)


def test_a_full_disk_during_a_checkpoint_removes_it_and_a_resume_uses_the_last_complete(tmp_path, monkeypatch):
    import errno

    from pathlib import Path

    root = tmp_path / "checkpoints"
    raw = tiny_job(trainer={"max_steps": 4}, checkpoint={"every_steps": 2, "keep_last": None})
    real_write = Path.write_text

    def full_on_the_second_checkpoint(path, *args, **kwargs):
        if ".tmp-step-000004" in str(path) and path.name.startswith("rng-"):  # after the weights, before the marker
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_on_the_second_checkpoint)
    with pytest.raises(UserError, match=r"checkpoint step 4 could not be written .*No space left on device; the "
                                        r"partial checkpoint was removed and a resubmit resumes from step-000002"):
        train(tmp_path, raw)
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["step-000002"]  # no .tmp-step-000004
    monkeypatch.setattr(Path, "write_text", real_write)
    assert train(tmp_path, raw) == exits.OK
    assert [s for s, _ in layout.complete_checkpoints(root)] == [2, 4]


def test_a_damaged_newest_checkpoint_is_skipped_on_resume(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    raw = tiny_job(trainer={"max_steps": 4}, checkpoint={"every_steps": 2, "keep_last": None})
    assert train(tmp_path, raw) == exits.OK
    weights = root / "step-000004" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated after it was marked complete
    capsys.readouterr()
    assert train(tmp_path, tiny_job(trainer={"max_steps": 5}, checkpoint={"every_steps": 2, "keep_last": None})) == exits.OK
    assert f"resumed from {root / 'step-000002'} at step 2" in capsys.readouterr().out
