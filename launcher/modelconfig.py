"""The model's own config.json, found on the login node before the job waits in a queue.

    found = modelconfig.find(job)     # Found(config={...}, source="…/config.json"), or Found(None, why)

`ft plan` and `ft submit`'s fit check price the real model, so they read its config.json from,
in order: `model.config` (random init); a local folder; the staged hub cache (`hub.cache_dir`,
huggingface_hub's layout, as `ft stage` fills it); the published configs ft ships for its
factories' models (`ftcore.arch.PUBLISHED`, no network needed); the hub's config.json alone
(login nodes have internet: one small HTTPS GET to HF_ENDPOINT, with HF_TOKEN for gated
models; never with HF_HUB_OFFLINE set). `model.config` is applied over what was found, as the
trainer applies it (`arch.with_overrides`: the keys it names, never another model_type). No huggingface_hub and no torch here: this runs for every `ft submit`.
"""

from __future__ import annotations

import functools
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

from ftcore import arch
from ftcore.errors import UserError
from ftcore.files import expand
from ftcore.schema import Job, looks_local

HUB = "https://huggingface.co"  # huggingface_hub's default HF_ENDPOINT
TIMEOUT_S = 10.0
_OFF = ("1", "true", "yes", "on")


class Found(NamedTuple):
    config: dict[str, Any] | None  # None: not found, `source` says why
    source: str


def find(job: Job) -> Found:
    model = job.model
    if model.init == "random":
        return Found(dict(model.config), "model.config (random init)")
    found = _find(model.path or "", job)
    if found.config is None:
        return found
    return Found(arch.with_overrides(found.config, model.config, found.source), found.source)


def _find(path: str, job: Job) -> Found:
    if not path:
        return Found(None, "no model.path")
    if "$" in path:  # `--print-srun`'s `model.path=$MODEL_DIR`: the batch script's to expand
        return Found(None, f"{path} is a shell variable, expanded where the job runs (its config.json is read there)")
    local = expand(path) / "config.json"
    if local.is_file():
        return Found(_read_json(local), str(local))
    if looks_local(path) or expand(path).exists():
        return Found(None, f"{path} is not a folder with config.json on this machine")
    cached = cached_config(path, cache_root(job))
    if cached:
        return Found(_read_json(cached), f"{cached} (staged)")
    if path in arch.PUBLISHED:
        return Found(dict(arch.PUBLISHED[path]), f"the published config.json of {path} (shipped with ft)")
    return from_hub(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable JSON config ({err})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a model config (a JSON object)")
    return config


def cache_root(job: Job) -> Path:
    from launcher import stage

    return stage.cache_dir(job)


def cached_config(repo_id: str, root: Path) -> Path | None:
    """config.json of `repo_id`'s staged snapshot in a huggingface_hub cache (`ft stage`'s layout:
    models--owner--name/refs/main holds the commit, snapshots/<commit>/ the files)."""
    return cached_file(repo_id, root, "config.json")


def cached_file(repo_id: str, root: Path, name: str) -> Path | None:
    """File `name` of `repo_id`'s staged snapshot (see cached_config), or None."""
    from launcher.stage import REVISION

    repo = root / f"models--{repo_id.replace('/', '--')}"
    try:
        commit = (repo / "refs" / REVISION).read_text().strip()
    except OSError:
        return None
    path = repo / "snapshots" / commit / name
    return path if path.is_file() else None


def from_hub(repo_id: str) -> Found:
    """The hub's config.json of `repo_id` (a few KB), or why it could not be read."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _OFF:
        return Found(None, f"{repo_id}: HF_HUB_OFFLINE is set and its config.json is neither local nor staged")
    endpoint = os.environ.get("HF_ENDPOINT", HUB).rstrip("/")
    return _fetch(endpoint, repo_id, os.environ.get("HF_TOKEN") or "")


@functools.lru_cache(maxsize=64)
def _fetch(endpoint: str, repo_id: str, token: str) -> Found:
    from launcher.stage import REVISION

    url = f"{endpoint}/{repo_id}/resolve/{REVISION}/config.json"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            config = json.loads(answer.read(2**20))
    except urllib.error.HTTPError as err:
        why = {401: "gated or private (export HF_TOKEN of an account with access)",
               403: "gated: your HF_TOKEN's account has no access",
               404: "no such repository or no config.json in it"}.get(err.code, f"HTTP {err.code}")
        return Found(None, f"{repo_id}: the hub's config.json could not be read: {why}")
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return Found(None, f"{repo_id}: the hub at {endpoint} could not be reached ({reason})")
    if not isinstance(config, dict):
        return Found(None, f"{repo_id}: the hub's config.json is not a JSON object")
    return Found(config, f"the hub's config.json of {repo_id}")
