"""`ft push`: the dry run lists what would go up; without network it fails clearly, changing nothing.

The Hub is never reached: HF_ENDPOINT points at a closed local port (connection refused at
once), and `ft` runs as a subprocess because huggingface_hub reads its settings on import.
"""

from __future__ import annotations

import pytest
from post_helpers import one_thread, train_job

from ftcore import files, layout
from launcher import locate
from ftcore.errors import UserError
from launcher.push import prepare

pytestmark = pytest.mark.train

NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
SECRET = "hf_test_token_never_shown_123"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    pytest.importorskip("torch")
    with one_thread():
        return train_job(tmp_path_factory.mktemp("home"), "lora")


def _tree(folder):
    """Every path under `folder` with its size and modification time."""
    return {(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _no_token_env(tmp_path):
    """An environment without HF_TOKEN, whose Hugging Face home holds a token file that must be ignored."""
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    (hf_home / "token").write_text("hf_from_a_file")
    return {**NO_HUB, "HF_HOME": str(hf_home), "HF_TOKEN": ""}


def test_dry_run_lists_the_model_files_and_sizes(ft, job):
    ckpt = locate.find_checkpoint(str(job))
    result = ft("push", str(job), "me/tiny-lora", "--dry-run", env=NO_HUB)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    expected = {p.relative_to(ckpt.path).as_posix(): p.stat().st_size for p in ckpt.path.rglob("*")
                if p.is_file() and "ft_state" not in p.parts}
    listed = {line.split()[-1]: line for line in lines[:-1]}
    assert listed.keys() == expected.keys()  # the model files only: no optimizer state
    assert "adapter_model.safetensors" in listed and "adapter_config.json" in listed
    assert "dry run, nothing uploaded" in lines[-1] and f"{len(expected)} file(s)" in lines[-1]
    assert "local base model" in result.stderr  # the adapter names a base that is not on the Hub


def test_upload_plan_sizes_are_the_files_sizes(job):
    upload = prepare(locate.find_checkpoint(str(job)), "me/tiny-lora")
    sizes = dict(upload.files)
    assert sizes["adapter_model.safetensors"] == (upload.folder / "adapter_model.safetensors").stat().st_size
    assert upload.total_bytes == sum(sizes.values())


def test_without_network_it_fails_clearly_and_changes_nothing(ft, job, tmp_path):
    before = _tree(job)
    result = ft("push", str(job), "me/tiny-lora", "--private", env={**NO_HUB, "HF_TOKEN": SECRET, "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    assert "ft: error: upload to http://127.0.0.1:9/me/tiny-lora failed" in result.stderr
    assert "nothing was changed locally" in result.stderr and "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert _tree(job) == before
    assert list(tmp_path.iterdir()) == []  # not even a Hugging Face cache folder


def test_offline_mode_is_refused_before_any_request(ft, job):
    result = ft("push", str(job), "me/tiny-lora", env={**NO_HUB, "HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRET})
    assert result.returncode == 2 and "HF_HUB_OFFLINE is set" in result.stderr


def test_the_token_comes_from_the_environment_only(ft, job, tmp_path):
    result = ft("push", str(job), "me/tiny-lora", env=_no_token_env(tmp_path))
    assert result.returncode == 2 and "HF_TOKEN is not set" in result.stderr


def test_repository_ids_are_checked(job):
    ckpt = locate.find_checkpoint(str(job))
    for bad in ("tiny", "me/tiny lora", "../x/y", "me/x.git", "me/"):
        with pytest.raises(UserError, match="not a Hub repository id"):
            prepare(ckpt, bad)


def test_symbolic_links_inside_a_checkpoint_are_never_followed(ft, job, tmp_path):
    """A link planted in a checkpoint (to a private file, or a folder) is refused by name, dry run
    included, before anything is read through it."""
    ckpt = locate.find_checkpoint(str(job))
    secret = tmp_path / "private.txt"
    secret.write_text("not for the Hub")
    link = ckpt.path / "notes.txt"
    link.symlink_to(secret)
    try:
        result = ft("push", str(job), "me/tiny-lora", "--dry-run", env=NO_HUB)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "holds symbolic links (notes.txt → " in result.stderr and "private.txt" not in result.stdout
        with pytest.raises(UserError, match="symbolic links"):
            prepare(ckpt, "me/tiny-lora")
    finally:
        link.unlink()
