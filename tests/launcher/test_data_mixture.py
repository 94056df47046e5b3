"""A list of data files or hub datasets, with optional weights, trains as one mixture: from the
command line and a recipe, through the checks, the hub staging list, `--cluster`'s upload and
the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftcore import hub
from ftcore.errors import UserError
from launcher import config, remote

TINY_QA = Path(__file__).resolve().parents[2] / "factories" / "data" / "tiny_qa.jsonl"


def qa(path: Path, count: int, tag: str) -> Path:
    lines = TINY_QA.read_text().splitlines()[:count]
    records = [json.loads(line) for line in lines]
    for index, record in enumerate(records):
        record["question"] = f"{tag}{index}: {record['question']}"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_bracketed_list_on_the_command_line_is_a_mixture_and_a_path_stays_text(tmp_path):
    a, b = qa(tmp_path / "a.jsonl", 4, "a"), qa(tmp_path / "b.jsonl", 4, "b")
    job = config.resolve("tiny", [f"data.path=[{a},{{path: {b}, weight: 0.5}}]"]).job
    assert [(s.path, s.weight, s.split) for s in job.data.sources] == [(str(a), 1.0, "train"), (str(b), 0.5, "train")]
    assert job.local_paths["data.path[0]"] == str(a) and job.local_paths["data.path[1]"] == str(b)
    single = config.resolve("tiny", [f"data.path={a}"]).job
    assert single.data.path == str(a) and not single.data.mixture
    with pytest.raises(UserError, match="an empty list names no data"):
        config.resolve("tiny", ["data.path=[]"])
    with pytest.raises(UserError, match="greater than 0"):
        config.resolve("tiny", [f"data.path=[{{path: {a}, weight: 0}}]"])


def test_every_source_is_checked_before_submitting(ft, tmp_path):
    a = qa(tmp_path / "a.jsonl", 4, "a")
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    result = ft("submit", "--dry-run", "--factory", "tiny", "data.path=[./a.jsonl,./chat.jsonl]")
    assert result.returncode == 2 and "chat.jsonl" in result.stderr, result.stderr
    assert "data.format=jsonl fits them" in result.stderr and "a.jsonl" not in result.stderr
    missing = ft("submit", "--yes", "--factory", "tiny", f"data.path=[{a},./nowhere.jsonl]")
    assert missing.returncode == 2 and "data.path[1] ./nowhere.jsonl does not exist" in missing.stderr


def test_hub_datasets_of_a_mixture_are_all_staged(tmp_path):
    a = qa(tmp_path / "a.jsonl", 4, "a")
    job = config.resolve("tiny", [f"data.path=[{a},org/one,{{path: org/two, split: extra}}]",
                                  "data.val_path=[org/one]"]).job
    found = {(x.repo_id, x.splits) for x in hub.artefacts(job)}
    assert found == {("org/one", ("train", "validation")), ("org/two", ("extra",))}


def test_cluster_upload_sends_each_local_source(tmp_path):
    a, b = qa(tmp_path / "a.jsonl", 4, "a"), qa(tmp_path / "b.jsonl", 4, "b")
    job = config.resolve("tiny", [f"data.path=[{a},{{path: {b}, weight: 2}},org/one]"]).job
    upload = remote.plan_upload(job, "hpc")
    paths = upload.config["data"]["path"]
    assert paths[0].startswith(remote.UPLOAD_MARK) and paths[1]["path"].startswith(remote.UPLOAD_MARK)
    assert paths[1]["weight"] == 2 and paths[2] == "org/one"
    assert sorted(p.name for p in upload.files.values()) == ["a.jsonl", "b.jsonl"]


@pytest.mark.train
def test_a_weighted_mixture_trains_as_one(ft, tmp_path):
    qa(tmp_path / "a.jsonl", 12, "a")
    qa(tmp_path / "b.jsonl", 6, "b")
    result = ft("submit", "--executor", "local", "--yes", "--factory", "tiny",
                "data.path=[./a.jsonl,{path: ./b.jsonl, weight: 1.5}]", "data.val_path=null", "data.val_fraction=0.25",
                "trainer.max_steps=2", "trainer.val_every_steps=2", "checkpoint.every_steps=2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout + result.stderr
    # 12 and 6 records, a quarter of each held out first (3 + 1), then b's 5 used 1.5 times (5 + a seeded 2)
    assert "a.jsonl: 9 records × 1 = 9 per epoch" in out and "b.jsonl: 5 records × 1.5 = 7 per epoch" in out
    assert "18 records → 16 training rows, 4 validation examples" in out, out[-3000:]
