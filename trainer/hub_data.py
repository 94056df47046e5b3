"""Hub datasets, read from their repository's data files in the Hugging Face cache.

The files are those `ft stage` downloads (ftcore.hub: the split's .jsonl, .json or .parquet
files), found through huggingface_hub's own cache. With HF_HUB_OFFLINE=1 (a site without
internet on the compute nodes) nothing is fetched: the staged snapshot is read as it is.
With network, missing files are downloaded into HF_HUB_CACHE first. No `datasets` package
is needed; parquet files need pyarrow (which `datasets` brings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftcore import hub
from ftcore.errors import UserError


def split_files(repo_id: str, split: str) -> list[Path]:
    """The local paths of `split`'s data files in hub dataset `repo_id`."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    from trainer.hub import hf_token

    try:
        folder = Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=list(hub.DATA_FILES),
                                        token=hf_token()))
    except LocalEntryNotFoundError:
        where = f"HF_HUB_CACHE={constants.HF_HUB_CACHE}"
        raise UserError(f"hub dataset {repo_id} is not in the cache ({where}) and the hub cannot be reached "
                        "(HF_HUB_OFFLINE=1 or no network): stage it on the login node with `ft stage`") from None
    except RepositoryNotFoundError as err:
        raise UserError(f"hub dataset {repo_id}: {str(err).splitlines()[0]}") from None
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    chosen = hub.split_files(files, split)
    if not chosen:
        raise UserError(f"hub dataset {repo_id} has no {'/'.join(hub.DATA_FILES)} file for split {split!r} "
                        f"(files: {', '.join(files[:12]) or 'none'})")
    return [folder / name for name in chosen]


def parquet_rows(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path} is a parquet file: reading it needs pyarrow in the image (pip install pyarrow)") from None
    return pq.read_table(path).to_pylist()
