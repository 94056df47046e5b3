"""`ft merge`: a LoRA checkpoint folded into its base gives the adapter's logits, as a plain model."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from post_helpers import PROMPT, one_thread, run_ft, train_job

from ftcore import files, layout
from launcher import locate
from ftcore.errors import UserError
from fttools.export import safetensors_header

pytestmark = pytest.mark.train

JOB = "20260101-000000-tiny-lora-0a0a0a"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with one_thread():  # for the whole module: its tests run these models too
        home = tmp_path_factory.mktemp("home")
        train_job(home, JOB)
        yield home


@pytest.fixture
def ckpt(home):
    return locate.find_checkpoint(str(home / "jobs" / JOB))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _prompt(ckpt):
    from fttools.inference import load_tokenizer, prompt_ids

    return torch.tensor([prompt_ids(load_tokenizer(ckpt), PROMPT)])


def test_merged_model_gives_the_adapter_models_logits(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    from fttools.inference import load_base, load_model
    from fttools.merge import merge

    out = merge(ckpt, tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert not any("lora" in key for key in safetensors_header(out / "model.safetensors"))
    assert json.loads((out / "config.json").read_text())["use_cache"] is True

    ids = _prompt(ckpt)
    cpu = torch.device("cpu")
    merged = _logits(AutoModelForCausalLM.from_pretrained(out).eval(), ids)
    adapted = _logits(load_model(ckpt, device=cpu), ids)
    base = _logits(load_base(ckpt, device=cpu).eval(), ids)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)  # fp32: equal up to summation order
    assert (merged - base).abs().max() > 1e-3  # the adapter did change the model


def test_bf16_merge_matches_within_bf16_precision(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    from fttools.inference import load_model
    from fttools.merge import merge

    out = merge(ckpt, tmp_path / "merged", dtype="bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t["dtype"] for t in safetensors_header(out / "model.safetensors").values()} == {"BF16"}
    ids = _prompt(ckpt)
    merged = _logits(AutoModelForCausalLM.from_pretrained(out).eval(), ids)
    adapted = _logits(load_model(ckpt, device=torch.device("cpu")), ids)
    # bf16 keeps 8 significant bits: each weight moves by up to 2^-9 of itself.
    scale = adapted.abs().max()
    assert (merged - adapted).abs().max() <= 0.02 * scale


def test_a_full_model_is_refused_clearly(home):
    from fttools.merge import merge

    full = locate.find_checkpoint(str(home / "jobs" / JOB / "base_model"))  # the saved random base
    assert full.kind == layout.FULL
    with pytest.raises(UserError, match="full model.*nothing to merge"):
        merge(full)


def test_out_must_be_new_or_empty_and_nothing_is_overwritten(ckpt, tmp_path):
    from fttools.merge import merge

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        merge(ckpt, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (merge(ckpt, empty) / "model.safetensors").is_file()
    weights = (empty / "model.safetensors").stat().st_mtime_ns
    assert merge(ckpt, empty) == empty  # the same merge again: complete and current, kept
    assert (empty / "model.safetensors").stat().st_mtime_ns == weights
    with pytest.raises(UserError, match="--overwrite"):
        merge(ckpt, empty, dtype="fp16")  # another dtype: not this folder's merge
    merge(ckpt, empty, dtype="fp16", overwrite=True)
    assert '"dtype": "fp16"' in (empty / "ft_output.json").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left aside


def test_a_failed_merge_leaves_no_folder_behind(ckpt, tmp_path, monkeypatch):
    from fttools import merge as merge_module

    def half_then_fail(ckpt, folder, dtype):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(merge_module, "save_merged", half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        merge_module.merge(ckpt, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary


def test_cli_merges_the_newest_checkpoint_of_a_job_named_by_prefix(home, tmp_path, monkeypatch):
    monkeypatch.setenv("FT_HOME", str(home))
    out = tmp_path / "merged"
    code, stdout, stderr = run_ft("merge", JOB[:12], "--out", str(out))
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    assert (out / "model.safetensors").is_file()

    code, _, stderr = run_ft("merge", str(home / "jobs" / JOB / "base_model"))
    assert code == 2 and "ft: error:" in stderr and "nothing to merge" in stderr and "Traceback" not in stderr
    code, _, stderr = run_ft("merge", JOB, "--dtype", "int8")
    assert code == 2 and "choose one of bf16, fp16, fp32" in stderr


def test_merged_and_exported_folders_are_readable_by_others_per_umask(ckpt, tmp_path):
    """Meant for sharing: every file and folder gets the modes a plain `cp` under the user's
    umask would give (the trainer's checkpoint files, copied, and the writers' own, are 0600)."""
    import os
    import stat

    from fttools.export import export
    from fttools.merge import merge

    for weights in ckpt.path.glob("*.safetensors"):
        os.chmod(weights, 0o600)  # as a private checkpoint may hold them
    old = os.umask(0o022)
    try:
        outs = [merge(ckpt, tmp_path / "merged"), export(ckpt, out=tmp_path / "lora").out,
                export(ckpt, out=tmp_path / "full", merge=True).out]
    finally:
        os.umask(old)
    for out in outs:
        for path in [out, *out.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


@pytest.mark.parametrize("where", ["itself", "inside"])
def test_out_inside_the_checkpoint_being_read_is_refused(ckpt, where):
    from fttools.export import export
    from fttools.merge import merge

    out = ckpt.path if where == "itself" else ckpt.path / "exports" / "x"
    before = sorted(p.name for p in ckpt.path.iterdir())
    for make in (lambda: merge(ckpt, out), lambda: export(ckpt, out=out), lambda: export(ckpt, out=out, merge=True)):
        with pytest.raises(UserError, match="is inside .*the folder being read"):
            make()
    assert sorted(p.name for p in ckpt.path.iterdir()) == before


def test_a_full_disk_during_a_merge_is_one_line(ckpt, tmp_path):
    """A real 200 KiB tmpfs (a private mount namespace) as --out: `ft merge` and `ft export
    --merge` say the disk is full, in one line, and leave nothing there."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here")
    disk = tmp_path / "disk"
    disk.mkdir()
    repo = Path(__file__).resolve().parents[2]
    for command in (["merge", str(ckpt.path), "--out", f"{disk}/m"],
                    ["export", str(ckpt.path), "--to", "vllm", "--merge", "--out", f"{disk}/e"]):
        script = 'mount -t tmpfs -o size=200k tmpfs "$D" && "$PY" -m launcher "$@"; code=$?; ls -A "$D"; exit $code'
        done = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, D=str(disk), PY=sys.executable, PYTHONPATH=str(repo)))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "No space left on device" in done.stderr and done.stdout.strip() == "", done.stdout
