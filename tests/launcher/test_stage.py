"""`ft stage` and offline compute nodes, against a stand-in hub (tests/hub_standin.py) that
the real huggingface_hub client reaches through HF_ENDPOINT.

The repositories hold a tiny random Llama saved with save_pretrained (sharded safetensors and
its tokenizer) and a tiny SQuAD laid out as rajpurkar/squad is (plain_text/*.parquet).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from hub_standin import StandInHub
from trainer_helpers import TINY_QA, save_tiny_model

MODEL = "ft-test/tiny-llama"
DATASET = "ft-test/tiny-squad"
GATED = "ft-test/gated-llama"
BROKEN = "ft-test/broken-llama"
JSONL = "ft-test/qa-jsonl"
GOOD_TOKEN = "hf_standin_allowed_token_123"


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
    model = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    # What a real model repository also holds and the trainer never loads.
    model |= {"README.md": b"# tiny\n", "original/consolidated.00.pth": b"\0" * 64}
    records = [json.loads(line) for line in TINY_QA.read_text().splitlines()]

    def parquet(rows) -> bytes:
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), out)
        return out.getvalue()

    dataset = {"README.md": b"---\npretty_name: tiny squad\n---\n",
               "plain_text/train-00000-of-00001.parquet": parquet(records[:40]),
               "plain_text/validation-00000-of-00001.parquet": parquet(records[40:48])}
    return {"model": model, "dataset": dataset}


@pytest.fixture
def hub(repo_files, monkeypatch, tmp_path):
    server = StandInHub()
    server.add("model", MODEL, repo_files["model"])
    server.add("dataset", DATASET, repo_files["dataset"])
    lines = TINY_QA.read_text().splitlines(keepends=True)
    server.add("dataset", JSONL, {"train.jsonl": "".join(lines[:30]).encode(), "dev.jsonl": "".join(lines[30:35]).encode()})
    server.add("model", GATED, repo_files["model"], gated=True, allowed=(GOOD_TOKEN,))
    shard = sorted(n for n in repo_files["model"] if n.endswith(".safetensors"))[2]
    server.add("model", BROKEN, repo_files["model"], truncated=(shard,))
    monkeypatch.setenv("HF_ENDPOINT", server.start())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # never the user's own cache or token
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HUB_ENABLE_HF_TRANSFER"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.stop()


def _factory(tmp_path: Path, **model) -> Path:
    """A tiny LoRA job on the hub model and dataset: 2 steps on CPU."""
    job = {
        "description": "tiny pretrained Llama and SQuAD from the (stand-in) hub",
        "model": {"path": MODEL, "dtype": "fp32", **model},
        "peft": {"dim": 4, "alpha": 8},
        "data": {"path": DATASET, "format": "squad", "val_path": DATASET, "max_seq_length": 64,
                 "global_batch_size": 4, "micro_batch_size": 2},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "limit_val_batches": 1},
        "container": {"runtime": "none"},
    }
    path = tmp_path / "hubjob.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _offline_profile(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text("hub:\n  offline: true\n")
    return path


def _snapshot(cache: Path, repo_type: str, repo_id: str) -> Path:
    storage = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    return storage / "snapshots" / (storage / "refs" / "main").read_text()


def _cached_repos(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.name.startswith(("models--", "datasets--"))} if cache.exists() else set()


def test_stage_downloads_what_the_trainer_loads_and_nothing_else(ft, hub, tmp_path, isolated_home):
    result = ft("stage", "--factory", str(_factory(tmp_path)))
    assert result.returncode == 0, result.stderr
    cache = isolated_home / "hub"  # the default: $FT_HOME/hub
    model = _snapshot(cache, "model", MODEL)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    wanted = {"config.json", "tokenizer.json", "tokenizer_config.json", *index["weight_map"].values()}
    present = {str(p.relative_to(model)) for p in model.rglob("*") if p.is_file()}
    assert wanted <= present and len(index["weight_map"].values()) > 1
    assert not present & {"README.md", "original/consolidated.00.pth"}
    data = _snapshot(cache, "dataset", DATASET)
    assert {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()} == {
        "plain_text/train-00000-of-00001.parquet", "plain_text/validation-00000-of-00001.parquet"}
    assert f"staged model.path {MODEL}" in result.stdout and f"staged data.path/data.val_path {DATASET}" in result.stdout

    hub.requests.clear()
    again = ft("stage", "--factory", str(_factory(tmp_path)))  # staged already: no file fetched again
    assert again.returncode == 0, again.stderr
    assert hub.requests and not [path for method, path in hub.requests if "/resolve/" in path]


@pytest.mark.train
def test_offline_site_refuses_unstaged_then_the_job_trains_without_touching_the_network(ft, hub, tmp_path):
    factory, profile = _factory(tmp_path), _offline_profile(tmp_path)
    submit = ["submit", "--factory", str(factory), "--profile", str(profile), "--executor", "local", "--yes"]
    refused = ft(*submit, "trainer.max_steps=2")
    assert refused.returncode == 2, refused.stderr
    assert f"model.path {MODEL} (model) is not staged" in refused.stderr
    assert "Traceback" not in refused.stderr and not list((Path(os.environ["FT_HOME"]) / "jobs").glob("*"))
    command = refused.stderr.split("first with: ", 1)[1].split("\n", 1)[0].strip()
    assert command == shlex.join(["ft", "stage", "--factory", str(factory), "--profile", str(profile),
                                  "trainer.max_steps=2"])

    staged = ft(*shlex.split(command)[1:])
    assert staged.returncode == 0, staged.stderr
    hub.requests.clear()
    trained = ft(*submit, "trainer.max_steps=2")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert hub.requests == []  # HF_HUB_OFFLINE=1: the job never asked the hub for anything
    folder = Path(trained.stderr.split("Job folder: ", 1)[1].split()[0])
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 2 and any("val_loss" in m for m in metrics)
    script = (folder / "job.sbatch").read_text()
    assert "export HF_HUB_OFFLINE=1\n" in script
    assert f"export HF_HUB_CACHE={shlex.quote(os.environ['FT_HOME'] + '/hub')}\n" in script


def test_submit_stage_stages_then_writes_an_offline_job(ft, hub, tmp_path, isolated_home):
    result = ft("submit", "--factory", str(_factory(tmp_path)), "--stage", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"staged model.path {MODEL}" in result.stderr and "warning" not in result.stderr
    assert "export HF_HUB_OFFLINE=1\n" in result.stdout
    assert _cached_repos(isolated_home / "hub") == {"models--ft-test--tiny-llama", "datasets--ft-test--tiny-squad"}


@pytest.mark.parametrize("repo, token, expected", [
    ("ft-test/no-such-model", None, "ft-test/no-such-model: no such model repository on http://127.0.0.1:"),
    (GATED, None, f"{GATED} is gated: accept its terms at http://127.0.0.1:"),
    (GATED, "hf_someone_else", f"{GATED} is gated and your HF_TOKEN's account has no access"),
    (BROKEN, None, f"{BROKEN}: the download from http://127.0.0.1:"),
], ids=["not-found", "gated-without-token", "gated-wrong-token", "download-breaks-off"])
def test_a_repository_that_cannot_be_staged_is_a_clear_error_and_leaves_nothing(
        ft, hub, tmp_path, isolated_home, repo, token, expected):
    env = {"HF_TOKEN": token} if token else {}
    result = ft("stage", "--factory", str(_factory(tmp_path, path=repo)), env=env)
    assert result.returncode == 2, result.stderr
    assert f"ft: error: model.path {expected}" in result.stderr and "Traceback" not in result.stderr
    # The dataset staged completely and stays; of the model nothing, not even the refs or listing.
    assert _cached_repos(isolated_home / "hub") == {"datasets--ft-test--tiny-squad"}
    assert not list((isolated_home / "hub" / ".locks").glob(f"models--*"))


def test_gated_repository_stages_with_hf_token_from_the_environment_and_never_writes_it(
        ft, hub, tmp_path, isolated_home):
    result = ft("stage", "--factory", str(_factory(tmp_path, path=GATED)), env={"HF_TOKEN": GOOD_TOKEN})
    assert result.returncode == 0, result.stderr
    assert (_snapshot(isolated_home / "hub", "model", GATED) / "config.json").is_file()
    for path in [*isolated_home.rglob("*"), *(tmp_path / "hf-home").rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert GOOD_TOKEN.encode() not in path.read_bytes(), path


def test_dry_run_on_a_laptop_warns_and_writes_the_offline_script(ft, hub, tmp_path):
    """No hub files staged, and no huggingface_hub installed at all: a dry run still works."""
    no_hub = tmp_path / "no-hub"
    (no_hub / "huggingface_hub").mkdir(parents=True)
    (no_hub / "huggingface_hub" / "__init__.py").write_text("raise ImportError('not installed here')\n")
    args = ["submit", "--factory", str(_factory(tmp_path)), "--profile", str(_offline_profile(tmp_path))]
    for env in ({}, {"PYTHONPATH": str(no_hub)}):
        result = ft(*args, "--dry-run", env=env)
        assert result.returncode == 0, result.stderr
        assert "ft: warning:" in result.stderr and "export HF_HUB_OFFLINE=1" in result.stdout
    assert "[hub]'" in result.stderr and "'ft-launch[hub]'" not in result.stderr  # ft is on no index: the checkout
    refused = ft(*args, "--executor", "local", "--yes", env={"PYTHONPATH": str(no_hub)})
    assert refused.returncode == 2 and "[hub]'" in refused.stderr


def test_container_env_cannot_set_what_the_hub_section_owns():
    from ftcore.errors import UserError
    from launcher import config

    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set by ft from the hub section"):
        config.resolve("tiny", ["container.env.HF_HUB_OFFLINE=1"])


def test_environment_only_for_jobs_that_need_the_hub():
    from launcher import config, stage

    assert stage.environment(config.resolve("tiny", []).job) == {}
    job = config.resolve("llama32_1b_squad", ["hub.cache_dir=/shared/hf", "container.env.NCCL_DEBUG=WARN"]).job
    assert stage.environment(job) == {"HF_HUB_CACHE": "/shared/hf", "NCCL_DEBUG": "WARN"}
    assert stage.environment(config.resolve("tiny", ["hub.offline=true"]).job)["HF_HUB_OFFLINE"] == "1"


def test_importing_the_launcher_for_a_dry_run_without_hub_files_loads_no_hub_client(tmp_path):
    import subprocess

    code = ("import sys\nfrom launcher import submit\n"
            "submit.prepare('tiny', [], executor='local', dry_run=True)\n"
            "print('huggingface_hub' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], env=dict(os.environ))
    assert out.stdout.strip() == "False", out.stderr


def test_the_trainer_reads_a_staged_hub_dataset_offline_and_names_an_unstaged_one(ft, hub, tmp_path, isolated_home):
    import subprocess

    cache = isolated_home / "hub"
    code = ("import sys\nfrom ftcore.errors import UserError\nfrom trainer.records import read_records\n"
            "try:\n    print(len(read_records(sys.argv[1], sys.argv[2])))\n"
            "except UserError as err:\n    sys.exit(f'user error: {err}')")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))

    def read(split: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, JSONL, split], capture_output=True, text=True, env=env)

    missing = read("train")
    assert f"user error: hub dataset {JSONL} is not in the cache" in missing.stderr
    staged = ft("stage", "--factory", str(_factory(tmp_path)), f"data.path={JSONL}", f"data.val_path={JSONL}")
    assert staged.returncode == 0, staged.stderr
    hub.requests.clear()
    assert read("train").stdout.split() == ["30"] and read("validation").stdout.split() == ["5"]
    assert hub.requests == []


@pytest.mark.parametrize("index", [b"{not json", b"[1, 2]", b'{"weight_map": {"a": 5}}',
                                   b'{"weight_map": {"model.embed_tokens.weight": "../../../etc/passwd"}}'],
                         ids=["garbage", "a-list", "not-names", "outside"])
def test_a_repository_with_a_malformed_weight_index_is_one_line(ft, hub, repo_files, tmp_path, isolated_home, index):
    hub.add("model", "ft-test/bad-index", {**repo_files["model"], "model.safetensors.index.json": index})
    result = ft("stage", "--factory", str(_factory(tmp_path, path="ft-test/bad-index")))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "model.safetensors.index.json" in result.stderr


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "index"])
def test_a_local_model_folder_with_damaged_weights_is_refused_before_the_queue(ft, repo_files, tmp_path, damage):
    """Checked from the headers at `ft submit` and `ft train`, not found by the trainer on the cluster."""
    model = tmp_path / "model"
    for name, data in repo_files["model"].items():
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_bytes(data)
    shard = sorted(model.glob("model-*.safetensors"))[1]
    if damage == "missing":
        shard.unlink()
    elif damage == "garbage":
        shard.write_bytes(b"\x89PNG not a tensor file at all")
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    else:
        (model / "model.safetensors.index.json").write_text("{")
    factory = _factory(tmp_path, path=str(model))
    for words in (["train"], ["submit", "--executor", "local", "--yes"]):
        result = ft(*words, "--factory", str(factory), "data.path=ft:tiny_qa.jsonl", "data.val_path=null")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert f"model.path {model}: " in result.stderr, result.stderr
