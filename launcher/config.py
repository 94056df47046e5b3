"""Resolve a job: factory (with its `extends:` chain) < cluster profile < command-line overrides.

Everything here works on plain dicts and is pure apart from reading YAML files; the schema
validates the result once, at the end. Every problem found on the way is collected and
raised together as one ``UserError``.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from launcher import paths
from ftcore.errors import UserError
from ftcore import schema
from ftcore.schema import SWITCHES, Job

FACTORY_PATH_ENV = "FT_FACTORY_PATH"
PROFILE_ENV = "FT_PROFILE"
_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_][A-Za-z0-9_-]*)*$")


# --------------------------------------------------------------------------- YAML files


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping from `path`, or a UserError that names the file and the line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{what} {path}{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a YAML mapping of keys to values")
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, recursively for mappings; lists and scalars are replaced."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------- factories


def user_config() -> dict[str, Any]:
    path = paths.config_dir() / "config.yaml"
    return read_yaml(path, "ft config") if path.is_file() else {}


def factory_dirs() -> list[tuple[Path, str]]:
    """Folders searched for factories, first match wins: $FT_FACTORY_PATH, the user's
    config (`factory_dirs:`), then the built-in ones."""
    dirs: list[tuple[Path, str]] = []
    for entry in os.environ.get(FACTORY_PATH_ENV, "").split(os.pathsep):
        if entry:
            dirs.append((Path(entry).expanduser(), f"${FACTORY_PATH_ENV}"))
    for entry in user_config().get("factory_dirs") or []:
        dirs.append((Path(str(entry)).expanduser(), "user config"))
    dirs.append((paths.factories_dir(), "built-in"))
    return dirs


def looks_like_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or os.sep in spec


def find_factory(spec: str, relative_to: Path | None = None) -> Path:
    """The YAML file for a factory name or path."""
    if looks_like_path(spec):
        candidate = Path(spec).expanduser()
        if not candidate.is_absolute() and relative_to is not None:
            candidate = relative_to / candidate
        if candidate.is_file():
            return candidate
        raise UserError(f"factory file {candidate} does not exist")
    for folder, _ in factory_dirs():
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{spec}{suffix}"
            if candidate.is_file():
                return candidate
    known = sorted(info.name for info in list_factories())
    close = difflib.get_close_matches(spec, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "`ft factories` lists them"
    raise UserError(f"unknown factory {spec!r}", hint=hint)


def load_factory(spec: str, relative_to: Path | None = None, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Path]:
    """A factory as a plain dict with its `extends:` chain merged in (the parent first)."""
    path = find_factory(spec, relative_to).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise UserError(f"factory `extends:` chain loops: {chain}")
    data = _layer(read_yaml(path, "factory"), str(path))
    data.setdefault("name", path.stem)
    parent_spec = data.get("extends")
    if parent_spec:
        parent, _ = load_factory(str(parent_spec), relative_to=path.parent, _seen=(*_seen, path))
        data = deep_merge(parent, data)
    return data, path


def _layer(data: dict[str, Any], source: str) -> dict[str, Any]:
    """One file's settings, its keys checked and its aliases folded (before any merging)."""
    if "base" in data and "extends" not in data:
        raise UserError(f"{source}: `base:` is now spelled `extends:` (the factory this one builds on)")
    problems = check_keys(data, source=source)
    if problems:
        raise UserError(*problems)
    try:
        return schema.fold_aliases(data)
    except ValueError as err:
        raise UserError(f"{source}: {err}") from None


@dataclass(frozen=True)
class FactoryInfo:
    name: str
    path: Path
    source: str
    data: dict[str, Any] = field(repr=False)
    error: str | None = None


def list_factories() -> list[FactoryInfo]:
    """Every factory visible from here, shadowed ones left out, broken ones kept with their error."""
    seen: dict[str, FactoryInfo] = {}
    for folder, source in factory_dirs():
        if not folder.is_dir():
            continue
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            if path.stem in seen:
                continue
            try:
                data, _ = load_factory(str(path))
                seen[path.stem] = FactoryInfo(path.stem, path, source, data)
            except UserError as err:
                seen[path.stem] = FactoryInfo(path.stem, path, source, {}, "; ".join(err.problems))
    return list(seen.values())


# --------------------------------------------------------------------------- profile


def profile_path(explicit: str | None = None) -> tuple[Path, bool]:
    """The cluster profile to use and whether the user named it (then it must exist)."""
    if explicit:
        return Path(explicit).expanduser(), True
    if os.environ.get(PROFILE_ENV):
        return Path(os.environ[PROFILE_ENV]).expanduser(), True
    configured = user_config().get("profile")
    if configured:
        return Path(str(configured)).expanduser(), True
    return paths.config_dir() / "cluster.yaml", False


def load_profile(explicit: str | None = None) -> tuple[dict[str, Any], Path | None]:
    """Site defaults (account, partition, image, binds, modules...) as a partial job."""
    path, named = profile_path(explicit)
    if not path.is_file():
        if named:
            raise UserError(f"cluster profile {path} does not exist")
        return {}, None
    return _layer(read_yaml(path, "cluster profile"), f"cluster profile {path}"), path


# --------------------------------------------------------------------------- schema walk


def _unwrap(annotation: Any) -> Any:
    """X for Optional[X]; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_mapping(annotation: Any) -> bool:
    return annotation is dict or get_origin(annotation) is dict


def _field(model: type[BaseModel], parts: list[str]) -> Any | None:
    """The annotation at a dotted path, or None where the path leaves the schema."""
    annotation: Any = model
    for part in parts:
        annotation = _unwrap(annotation)
        if _is_mapping(annotation):
            value_type = get_args(annotation)[1] if get_args(annotation) else Any
            annotation = value_type
            continue
        if not _is_model(annotation) or part not in annotation.model_fields:
            return None
        annotation = annotation.model_fields[part].annotation
    return annotation


def valid_keys(model: type[BaseModel] = Job, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections included."""
    keys = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        inner = _unwrap(info.annotation)
        if _is_model(inner):
            keys.extend(valid_keys(inner, f"{dotted}."))
    return keys


def closest_keys(dotted: str) -> list[str]:
    """Valid keys a mistyped one probably meant: whole-path matches, then siblings."""
    keys = valid_keys()
    found = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.6)
    parent, _, last = dotted.rpartition(".")
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    for match in difflib.get_close_matches(last, [k.rpartition(".")[2] for k in siblings], n=3, cutoff=0.5):
        candidate = f"{parent}.{match}" if parent else match
        if candidate not in found:
            found.append(candidate)
    # A key that exists under another section (`max_steps` for `trainer.max_steps`).
    for key in keys:
        if key.rpartition(".")[2] == last and key not in found:
            found.append(key)
    return found[:4]


def _unknown_key(dotted: str, source: str) -> str:
    close = closest_keys(dotted)
    suggestion = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{source}: unknown key {dotted!r}{suggestion}"


def check_keys(data: dict[str, Any], source: str, model: type[BaseModel] = Job, prefix: str = "") -> list[str]:
    """Unknown keys in a (partial) job dict, each with the closest valid keys."""
    problems = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in model.model_fields:
            problems.append(_unknown_key(dotted, source))
            continue
        inner = _unwrap(model.model_fields[key].annotation)
        if _is_model(inner) and isinstance(value, dict):
            problems.extend(check_keys(value, source, inner, f"{dotted}."))
    return problems


# --------------------------------------------------------------------------- overrides


@dataclass(frozen=True)
class Override:
    key: str
    value: Any
    text: str


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a number, as YAML 1.2 and every user does."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line value read as YAML; text that is not valid YAML stays a string."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError:
        return text


def _wants_text(annotation: Any) -> bool:
    """True where the field is a string and not also a number or flag."""
    if annotation is None:
        return False
    annotation = _unwrap(annotation)
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return str in members and not any(m in (int, float, bool) for m in members)


# Settings a workshop's script fills from SLURM's variables, and the #SBATCH line that makes
# SLURM set each one: an empty value means the variable was not set.
SLURM_VARIABLES = {
    "trainer.devices": ("SLURM_GPUS_PER_NODE", "#SBATCH --gpus-per-node=N"),
    "trainer.num_nodes": ("SLURM_NNODES", "#SBATCH --nodes=N"),
}


def _empty_value(key: str) -> str:
    """`key=` with nothing after it: almost always `key="$VAR"` with VAR unset."""
    if key not in SLURM_VARIABLES:
        return (f"{key}= has no value: the shell variable it was written with is empty or not set "
                f"(write {key}=null for no value)")
    variable, line = SLURM_VARIABLES[key]
    state = "is not set here" if os.environ.get(variable) is None else "is empty here"
    return (f"{key}= has no value: ${variable} {state}. SLURM sets it only when the script asks for it "
            f"with `{line}`: add that line, or write the number ({key}=1)")


def _allows_none(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def parse_overrides(args: list[str]) -> tuple[list[Override], list[str]]:
    """`key=value` words into Overrides, and a problem for each malformed word."""
    overrides, problems = [], []
    for word in args:
        key, eq, text = word.partition("=")
        if word.startswith("-"):
            bare = word.lstrip("-")
            good = bare if "=" in bare else f"{bare}=VALUE"
            problems.append(
                f"{word!r} is not an ft option; overrides are written without dashes: {good}"
            )
            continue
        if not eq:
            problems.append(f"{word!r} is not an override: write key=value, e.g. trainer.max_steps=250")
            continue
        if not _OVERRIDE_KEY.match(key):
            problems.append(f"{key!r} is not a valid key: use dot notation like optim.lr_scheduler.warmup_steps")
            continue
        if not text:
            problems.append(_empty_value(key))
            continue
        quoted = text[:1] in ("'", '"')
        annotation = _field(Job, key.split("."))
        if _wants_text(annotation) and not quoted and not (text in ("null", "~") and _allows_none(annotation)):
            value = text  # a free-form string keeps the text the user wrote
        else:
            value = parse_value(text)
        overrides.append(Override(key, value, word))
    return overrides, problems


def _switch(section: str, word: Any, existing: Any) -> Any:
    options = SWITCHES[section]
    choice = "none" if word is None else str(word).lower()
    if choice not in options:
        raise UserError(f"{section}={word!r}: choose one of {', '.join(options)}")
    preset = options[choice]
    if preset is None:
        return None
    if isinstance(existing, dict) and existing.get("method", choice) == choice:
        return existing
    return dict(preset)


def apply_overrides(data: dict[str, Any], overrides: list[Override]) -> tuple[dict[str, Any], list[str]]:
    """A copy of `data` with each valid override set in order, and a problem for each other."""
    result = deep_merge({}, data)
    problems = []
    given: dict[str, Override] = {}
    for override in overrides:
        key = schema.ALIASES.get(override.key, override.key)
        earlier = given.setdefault(key, override)
        if earlier.key != override.key and earlier.value != override.value:
            problems.append(f"{earlier.text} and {override.text} set one setting to two values: give one")
            continue
        parts = key.split(".")
        if _field(Job, parts) is None:
            problems.append(_unknown_key(override.key, "command line"))
            continue
        node = result
        for depth, part in enumerate(parts[:-1]):
            section = ".".join(parts[: depth + 1])
            child = node.get(part)
            if isinstance(child, str) and section in SWITCHES:
                child = node[part] = _switch(section, child, None)
            if child is None:  # `peft=none peft.dim=8` switches LoRA back on
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"{section} is a value, not a section: cannot set {override.key}")
                break
            node = child
        else:
            last = parts[-1]
            if key in SWITCHES and not isinstance(override.value, dict):
                try:
                    node[last] = _switch(key, override.value, node.get(last))
                except UserError as err:
                    problems.extend(err.problems)
            else:
                node[last] = override.value
    return result, problems


def normalise_switches(data: dict[str, Any]) -> dict[str, Any]:
    """`peft: none` / `peft: lora` written as a word in a YAML file."""
    result = dict(data)
    for section in SWITCHES:
        if isinstance(result.get(section), str):
            result[section] = _switch(section, result[section], None)
    return result


# --------------------------------------------------------------------------- validation

def validate(data: dict[str, Any]) -> Job:
    """A merged dict (switch words allowed) as a Job, every problem listed at once."""
    return schema.validate(normalise_switches(data))


# --------------------------------------------------------------------------- resolve


@dataclass(frozen=True)
class Resolved:
    job: Job
    factory_path: Path
    profile_path: Path | None
    overrides: tuple[Override, ...]


def resolve(factory: str, overrides: list[str], profile: str | None = None) -> Resolved:
    """Factory < profile < command line, validated. Override syntax and key problems, and
    type problems, are each reported all at once."""
    parsed, problems = parse_overrides(overrides)
    data, factory_file = load_factory(factory)
    site, site_path = load_profile(profile)
    merged, more = apply_overrides(deep_merge(normalise_switches(data), site), parsed)
    problems += more
    try:
        job = validate(merged)
    except UserError as err:
        problems += err.problems
    if problems:
        raise UserError(*problems)
    return Resolved(job, factory_file, site_path, tuple(parsed))
