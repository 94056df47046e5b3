"""Staging: a job's hub model and dataset, downloaded on the login node into a shared cache.

    ft stage  --factory llama32_1b_squad [overrides]       # download what the job names
    ft submit --factory llama32_1b_squad --stage --yes     # stage, then submit it offline

Many clusters' compute nodes cannot reach the hub. The job then reads the cache that `ft
stage` filled (`hub.cache_dir`, its HF_HUB_CACHE) with HF_HUB_OFFLINE=1; on a site whose
profile says `hub.offline: true`, `ft submit` refuses a job whose hub files are not there.
The cache is huggingface_hub's own layout, written by its own client (`snapshot_download`),
so transformers and the trainer find the files exactly as if they had downloaded them.

huggingface_hub (`pip install './ft_launch-0.1.0-py3-none-any.whl[hub]'`) is imported only inside the functions that talk
to the hub or read its cache: `ft --help` and jobs without hub files never load it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ftcore import hub, layout
from ftcore.errors import UserError
from ftcore.hub import Artefact
from ftcore.schema import Job
from launcher import paths, sharedcache

REVISION = "main"  # what the trainer loads when a job names a hub id


def cache_dir(job: Job) -> Path:
    """The shared cache this job's hub files live in: hub.cache_dir, else $FT_HOME/hub."""
    chosen = Path(job.hub.cache_dir).expanduser() if job.hub.cache_dir else paths.ft_home() / "hub"
    return chosen.absolute()


def environment(job: Job) -> dict[str, str]:
    """The variables the training processes get (sbatch script and local executor alike):
    ft's hub settings, then container.env (which the schema keeps off ft's names)."""
    env = {}
    if job.hub.offline or hub.artefacts(job):
        env["HF_HUB_CACHE"] = str(cache_dir(job))
    if job.hub.offline:
        env["HF_HUB_OFFLINE"] = "1"
    return {**env, **job.container.env}


def command(factory: str, overrides: list[str], profile: str | None = None,
            sweeps: list[str] | None = None) -> str:
    """The `ft stage` command line that stages what a submission with these arguments names."""
    words = ["ft", "stage", "--factory", factory, *(["--profile", profile] if profile else [])]
    words += [word for sweep in sweeps or [] for word in ("--sweep", sweep)]
    return shlex.join(words + list(overrides))


def _client():
    try:
        import huggingface_hub
    except ImportError:
        from ftcore import contract

        raise contract.missing_extra("hub", "staging hub files") from None
    return huggingface_hub


def _token() -> str | bool:
    """HF_TOKEN from the environment, or no token at all: ft reads it nowhere else, writes it nowhere."""
    return os.environ.get("HF_TOKEN") or False


def _label(artefact: Artefact) -> str:
    return f"{'/'.join(artefact.keys)} {artefact.repo_id}"


# --------------------------------------------------------------------------- is it staged?


def _snapshot_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def check(artefact: Artefact, root: Path) -> str | None:
    """Why `artefact` is not usable offline from the cache `root`, or None when it is.

    huggingface_hub resolves the revision in the cache and, from the file listing it saved
    when it downloaded, says whether the snapshot lacks a file; ft adds what the trainer needs
    (config, weights and every shard of them, tokenizer, the split's data files)."""
    hf = _client()
    try:
        listing = [f.path for f in hf.get_cached_repo_tree(artefact.repo_id, repo_type=artefact.repo_type,
                                                            revision=REVISION, cache_dir=root)]
    except Exception:  # noqa: BLE001  no listing saved (an older client staged it): ft's own check below
        listing = None
    allow = hub.patterns(artefact, listing) if listing is not None else None
    try:
        folder = Path(hf.snapshot_download(artefact.repo_id, repo_type=artefact.repo_type, revision=REVISION,
                                           cache_dir=root, allow_patterns=allow, local_files_only=True))
    except Exception as err:  # noqa: BLE001  LocalEntryNotFoundError, IncompleteSnapshotError
        incomplete = getattr(hf.errors, "IncompleteSnapshotError", ())
        return "its snapshot lacks files (an interrupted download)" if isinstance(err, incomplete) else "not in the cache"
    files = _snapshot_files(folder)
    problems = hub.missing_files(artefact, files)
    if artefact.weights:
        problems += layout.weights_damage(folder, set(files))
    return "; ".join(problems) or None


def unstaged(job: Job) -> list[str]:
    """A line for each hub model or dataset of `job` that the job could not load offline."""
    root = cache_dir(job)
    found = []
    for artefact in hub.artefacts(job):
        why = check(artefact, root)
        if why:
            found.append(f"{_label(artefact)} ({artefact.repo_type}) is not staged in {root}: {why}")
    return found


# --------------------------------------------------------------------------- staging


@dataclass(frozen=True)
class Staged:
    artefact: Artefact
    folder: Path  # the snapshot: cache/<type>s--<owner>--<name>/snapshots/<commit>
    files: int
    size: int

    def line(self) -> str:
        from launcher.push import human_size

        return (f"staged {_label(self.artefact)} ({self.artefact.repo_type}, commit {self.folder.name[:12]}): "
                f"{self.files} file(s), {human_size(self.size)} in {self.folder}")


def stage(job: Job) -> list[Staged]:
    """Download every hub model and dataset `job` names into its cache. A repository that
    cannot be staged raises UserError (all of them reported together) and leaves nothing of
    itself in the cache; those staged completely stay."""
    root = cache_dir(job)
    done, problems = [], []
    for artefact in hub.artefacts(job):
        try:
            done.append(_stage_one(artefact, root))
        except UserError as err:
            problems += err.problems
    problems += untrusted(job)  # files someone else put there, which the download reused
    if problems:
        raise UserError(*problems)
    return done


def _stage_one(artefact: Artefact, root: Path) -> Staged:
    hf = _client()
    api = hf.HfApi(token=_token())
    try:
        info = api.repo_info(artefact.repo_id, repo_type=artefact.repo_type, revision=REVISION)
        repo_files = [s.rfilename for s in info.siblings] if info.siblings is not None else \
            api.list_repo_files(artefact.repo_id, repo_type=artefact.repo_type, revision=info.sha)
    except Exception as err:  # noqa: BLE001  every hub or network error becomes one clear line
        raise UserError(_why(artefact, err, hf)) from None
    allow = hub.patterns(artefact, repo_files)
    lacking = hub.missing_files(artefact, hub.selected(repo_files, allow))
    if lacking:
        raise UserError(f"{_label(artefact)}: the repository has {'; '.join(lacking)}, so the trainer "
                        f"cannot load it (files: {', '.join(repo_files[:12]) or 'none'})")
    sharedcache.make_dir(root)
    from huggingface_hub.file_download import repo_folder_name

    storage = root / repo_folder_name(repo_id=artefact.repo_id, repo_type=artefact.repo_type)
    with _locked(root, storage.name), _removed_on_failure([storage, root / ".locks" / storage.name]):
        try:
            folder = Path(hf.snapshot_download(artefact.repo_id, repo_type=artefact.repo_type, revision=REVISION,
                                               cache_dir=root, allow_patterns=allow, token=_token()))
        except Exception as err:  # noqa: BLE001
            raise UserError(_why(artefact, err, hf)) from None
        why = check(artefact, root)
        if why:
            raise UserError(f"{_label(artefact)}: downloaded, but {why}")
    files = [folder / name for name in _snapshot_files(folder)]
    return Staged(artefact, folder, len(files), sum(f.stat().st_size for f in files))


def _why(artefact: Artefact, err: Exception, hf) -> str:
    """One line a user can act on, for any error the hub client raised."""
    label, endpoint = _label(artefact), hf.constants.ENDPOINT
    errors = hf.errors
    page = f"{endpoint}/{'datasets/' if artefact.repo_type == 'dataset' else ''}{artefact.repo_id}"
    if isinstance(err, errors.GatedRepoError):
        if _token():
            return f"{label} is gated and your HF_TOKEN's account has no access: accept its terms at {page}"
        return (f"{label} is gated: accept its terms at {page}, then export HF_TOKEN=<a token of that "
                "account> (ft reads it from the environment only)")
    if isinstance(err, errors.RepositoryNotFoundError):
        private = "" if _token() else " (a private one needs HF_TOKEN in your environment)"
        return f"{label}: no such {artefact.repo_type} repository on {endpoint}{private}"
    if isinstance(err, errors.RevisionNotFoundError):
        return f"{label}: the repository has no revision {REVISION!r}"
    if isinstance(err, errors.HfHubHTTPError) and err.response is not None:
        return f"{label}: the hub at {endpoint} answered HTTP {err.response.status_code}: {str(err).splitlines()[0]}"
    if isinstance(err, errors.HFValidationError):
        return f"{label}: not a hub repository id ({err})"
    if isinstance(err, OSError) and not isinstance(err, (ConnectionError, errors.LocalEntryNotFoundError)):
        return f"{label}: cannot write the cache: {err}"
    return (f"{label}: the download from {endpoint} failed ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "nothing of it was kept: run ft stage again where the hub can be reached (the login node)")


def _locked(root: Path, name: str):
    """One `ft stage` per repository at a time, so one's clean-up never removes another's files
    (a lock file every user of a shared cache can take)."""
    return sharedcache.lock(root / ".locks" / f"ft-stage-{name}.lock")


def _storage(artefact: Artefact, root: Path) -> Path:
    """huggingface_hub's folder for a repository: root/models--OWNER--NAME (refs, snapshots, blobs)."""
    return root / f"{artefact.repo_type}s--{artefact.repo_id.replace('/', '--')}"


def untrusted(job: Job) -> list[str]:
    """A line for each hub repository of `job` whose cached files someone else owns than you,
    root or hub.trusted_owners: the trainer would load them as if they came from the hub."""
    root = cache_dir(job)
    found = []
    for artefact in hub.artefacts(job):
        storage = _storage(artefact, root)
        if not storage.is_dir():
            continue
        problem = sharedcache.untrusted([storage, *storage.rglob("*")], job.hub.trusted_owners, "hub.trusted_owners")
        if problem:
            found.append(f"{_label(artefact)} ({artefact.repo_type}) in the hub cache is refused: {problem}")
    return found


@contextlib.contextmanager
def _removed_on_failure(folders: list[Path]) -> Iterator[None]:
    """On any failure (Ctrl-C included) put `folders` back as they were: what this attempt
    added is removed, the refs it moved are restored. Nothing half-cached stays."""
    before = {folder: _contents(folder) for folder in folders}
    try:
        yield
    except BaseException:
        for folder, (entries, refs) in before.items():
            if not entries and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for path in sorted(set(_contents(folder)[0]) - set(entries), key=lambda p: -len(p.parts)):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            for ref, text in refs.items():
                ref.write_text(text)
        raise


def _contents(folder: Path) -> tuple[list[Path], dict[Path, str]]:
    if not folder.is_dir():
        return [], {}
    entries = list(folder.rglob("*"))
    refs = {p: p.read_text() for p in entries if p.parent.name == "refs" and p.is_file()}
    return entries, refs
