"""`ft plan` prices a micro batch from the data's own rows where it can read them, prices the
worst case (every row max_seq_length) where it cannot and then warns instead of refusing, and
turns activation checkpointing on by itself (`auto`) where the job needs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_helpers import folder_of
from launcher import config, datarows, plan

RECIPES = Path(__file__).parent / "automodel"
GPU = ("trainer.accelerator=gpu", "model.dtype=fp32")


def records(path: Path, lengths: list[int]) -> Path:
    path.write_text("".join(json.dumps({"context": "word " * n, "question": "which?", "answers": {"text": ["a"]}})
                            + "\n" for n in lengths))
    return path


def test_rows_are_priced_from_a_local_file_tokenized_as_the_trainer_does(ft, tmp_path):
    pytest.importorskip("transformers")
    data = records(tmp_path / "qa.jsonl", [3, 5, 8, 13, 21, 34, 55, 89, 144, 233] * 3)
    words = ("--json", *GPU, f"data.path={data}", "data.max_seq_length=2048", "data.micro_batch_size=4",
             "data.global_batch_size=16", "data.val_path=null", "data.val_fraction=0")
    result = ft("plan", "--factory", "tiny", *words)
    assert result.returncode == 0, result.stderr
    est = json.loads(result.stdout)
    assert est["rows_from_data"]
    note = next(n for n in est["notes"] if n.startswith("rows from the data"))
    assert "all 30 records" in note and "tokenized with" in note and "tiny_tokenizer/tokenizer.json" in note
    priced = int(note.rsplit("the largest micro batch: ", 1)[1].split()[0])

    # The trainer's own rows of the same file: the plan's micro batch bounds its largest, closely.
    from fttools.tiny import tiny_tokenizer
    from trainer.data import tokenize_all

    job = config.resolve("tiny", list(words[1:])).job
    rows = sorted((len(s.input_ids) for s in tokenize_all(job.data, tiny_tokenizer(), 0).train), reverse=True)
    largest = sum(rows[:4])
    assert largest <= priced <= 1.2 * largest, (rows[:4], priced)
    assert priced < 4 * 2048  # not the worst case
    activations = next(r for r in est["rows"] if r["name"] == "activations")
    assert activations["how"].startswith(f"{priced} tokens")


def test_the_lengths_are_cached_and_a_changed_file_is_measured_again(tmp_path, isolated_home):
    data = records(tmp_path / "qa.jsonl", [10, 20])
    job = config.resolve("tiny", [f"data.path={data}", "data.val_path=null"]).job
    datarows.measure(job)
    assert not isolated_home.exists()  # no FT_HOME made for a cache (a refused submit writes nothing)
    isolated_home.mkdir()
    first = datarows.measure(job)
    assert len(list((isolated_home / "cache" / "rows").glob("*.json"))) == 1
    assert datarows.measure(job) == first
    records(data, [10, 20, 400])
    again = datarows.measure(job)
    assert again.records == 3 and again.lengths[0] > first.lengths[0]


def test_without_a_tokenizer_here_rows_are_counted_in_bytes(tmp_path):
    data = records(tmp_path / "qa.jsonl", [10, 20])
    job = config.resolve("tiny", [f"data.path={data}", "data.val_path=null", "model.tokenizer=org/not-here"]).job
    rows = datarows.measure(job)
    assert "UTF-8 bytes" in rows.how
    assert rows.lengths[0] >= len(("word " * 20).encode())


def test_data_it_cannot_see_is_priced_at_the_worst_case_and_warned_not_refused(ft):
    recipe = str(RECIPES / "qlora_guide.yaml")
    shown = ft("plan", "--factory", recipe, "container.runtime=none", "model.activation_checkpointing=false")
    assert "rows: the worst case, micro batch 8 × max_seq_length 2048" in shown.stdout
    assert "does NOT fit" in shown.stdout
    dry = ft("submit", "--dry-run", "--factory", recipe, "container.runtime=none",
             "model.activation_checkpointing=false")
    assert dry.returncode == 0, dry.stderr
    assert "at the worst case of its rows" in dry.stderr and "not refused" in dry.stderr


def test_a_model_whose_state_alone_does_not_fit_is_refused_whatever_its_rows(ft):
    result = ft("submit", "--dry-run", "--factory", "llama31_8b", "peft=none", "container.runtime=none")
    assert result.returncode == 2
    assert "needs about 135 GiB per GPU" in result.stderr


def test_activation_checkpointing_auto_turns_on_only_where_the_job_needs_it():
    qlora = config.resolve(str(RECIPES / "qlora_guide.yaml"), ["container.runtime=none"]).job
    assert qlora.model.activation_checkpointing == "auto"
    settled, said = plan.settle(qlora)
    assert settled.model.activation_checkpointing is True
    assert "auto → on (173.0 GiB per GPU without it, 23.9 GiB with it" in said
    est = plan.estimate(qlora)
    assert est.decision.activation_checkpointing and est.fits and said in est.notes
    tiny_gpu, said = plan.settle(config.resolve("tiny", list(GPU)).job)
    assert tiny_gpu.model.activation_checkpointing is False and "auto → off" in said
    cpu, said = plan.settle(config.resolve("tiny", []).job)
    assert cpu.model.activation_checkpointing is False and said is None
    forced = config.resolve(str(RECIPES / "qlora_guide.yaml"), ["container.runtime=none",
                                                                 "model.activation_checkpointing=false"]).job
    assert plan.settle(forced)[0] is forced


@pytest.mark.slurm
def test_the_reference_qlora_recipe_submits_as_it_is(slurm_cluster, ft, tmp_path):
    """The guide's QLoRA YAML unchanged; the site's profile gives the image and (on this GPU-less
    cluster) holds the job so that it never starts."""
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump({"container": {"image": str(tmp_path)},
                                       "slurm": {"gpus_per_node_flag": False, "extra": {"hold": True}}}))
    result = ft("submit", "--profile", str(profile), "--factory", str(RECIPES / "qlora_guide.yaml"), "--yes")
    assert result.returncode == 0, result.stderr
    job_id = next(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("Submitted batch job"))
    import subprocess

    subprocess.run(["scancel", job_id], timeout=30)
    assert "activation checkpointing: auto → on" in result.stderr
    written = yaml.safe_load((folder_of(result.stdout) / "config.yaml").read_text())
    assert written["model"]["activation_checkpointing"] is True  # the job folder records the decision


def test_ft_train_decides_activation_checkpointing_as_submit_does(tmp_path):
    from launcher import train

    planned = train.prepare(str(RECIPES / "qlora_guide.yaml"), ["container.runtime=none"], environ={})
    assert planned.job.model.activation_checkpointing is True
    cpu = train.prepare("tiny", [], environ={})
    assert cpu.job.model.activation_checkpointing is False
