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
from typing import Any, TypedDict, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from launcher import paths, translate
from ftcore.files import expand
from ftcore.errors import UserError
from ftcore import schema
from ftcore.schema import SWITCHES, Job, deep_merge

FACTORY_PATH_ENV = "FT_FACTORY_PATH"
PROFILE_ENV = "FT_PROFILE"
_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_][A-Za-z0-9_-]*)*$")


# --------------------------------------------------------------------------- YAML files

# What a file or an override may expand to: YAML aliases can make a few lines stand for
# millions of values (a "billion laughs"); ft reads small configs, so anything larger is a mistake.
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_BYTES = 2**20  # a factory, profile or resolved job is a few KB


class _Yaml12Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when there is one
    """YAML 1.2 core scalars, the way users read them: `1e-4` is a number, while `16:00`,
    `010` and `no` stay text (YAML 1.1 makes them 960, 8 and false). Numbers are decimal."""


_Yaml12Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("int", r"^[-+]?(?:0|[1-9][0-9]*)$", list("-+0123456789")),
    ("float", r"^[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)$"
              r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$", list("-+0123456789.")),
):
    _Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), _first)
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"])


# Characters YAML reads as line breaks besides \n and \r (NEL, LINE and PARAGRAPH SEPARATOR).
_LINE_BREAKS = "\x85\u2028\u2029"


class _Dumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 or 1.2 would read as something else, so a file ft
    writes reads back the same whichever loader reads it (the trainer uses PyYAML's)."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        node = super().represent_str(data)
        looks_like = (_Yaml12Loader.resolve(_Yaml12Loader, yaml.ScalarNode, data, (True, False)),
                      yaml.SafeLoader.resolve(yaml.SafeLoader, yaml.ScalarNode, data, (True, False)))
        if node.style is None and any(tag != "tag:yaml.org,2002:str" for tag in looks_like):
            node.style = "'"
        if any(char in data for char in _LINE_BREAKS):
            node.style = '"'  # escaped (\N, \L, \P): written raw, a reader takes them for line breaks
        return node


_Dumper.add_representer(str, _Dumper.represent_str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _check_size(node: yaml.Node, source: str) -> None:
    """Refuse a document that expands (through aliases) past MAX_NODES, nests deeper than
    MAX_DEPTH, or refers to itself."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise UserError(f"{source}: a YAML alias refers to the value that contains it")
        if depth > MAX_DEPTH:
            raise UserError(f"{source}: nested more than {MAX_DEPTH} levels deep")
        active.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1 + sum(size(child, depth + 1) for child in children)
        active.discard(key)
        if total > MAX_NODES:
            raise UserError(f"{source}: expands to more than {MAX_NODES:,} values (YAML aliases?)")
        sizes[key] = total
        return total

    size(node, 0)


def _wants_text(annotation: Any) -> bool:
    """True where the field is a string and not also a number or flag."""
    if annotation is None:
        return False
    annotation = _unwrap(annotation)
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return str in members and not any(m in (int, float, bool) for m in members)


def _inner(annotation: Any, key: Any = None) -> Any:
    """The annotation one level down: a model's field, a mapping's value or a list's item."""
    annotation = _unwrap(annotation)
    if _is_model(annotation):
        info = annotation.model_fields.get(key) if isinstance(key, str) else None
        return info.annotation if info else None
    if _is_mapping(annotation) or get_origin(annotation) in (list, tuple):
        args = get_args(annotation)
        return args[-1] if args else None
    return None


def _to_python(loader: yaml.Loader, node: yaml.Node, annotation: Any) -> Any:
    """Build the value of `node`; a plain scalar where the schema wants text keeps the text
    the user wrote (`begin: 16:00`, `comment: 010`, `mail-user: no`)."""
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # `<<: *base` merge keys
        result = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise UserError(f"line {key_node.start_mark.line + 1}: a key must be a plain word")
            result[key] = _to_python(loader, value_node, _inner(annotation, key))
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(loader, item, _inner(annotation)) for item in node.value]
    if (isinstance(node, yaml.ScalarNode) and not node.style and _wants_text(annotation)
            and node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")):
        return node.value
    return loader.construct_object(node, deep=True)


def load_yaml(text: str, source: str, schema: Any = None) -> Any:
    """One YAML document, size-bounded; `schema` (an annotation, e.g. Job) keeps text fields text."""
    if len(text) > MAX_BYTES:
        raise UserError(f"{source}: {len(text):,} characters is too large for a job's settings")
    depth = 0
    for char in text:  # PyYAML takes seconds on thousands of nested brackets: refuse them first
        depth += (char in "[{") - (char in "]}")
        if depth > 2 * MAX_DEPTH:
            raise UserError(f"{source}: nested more than {MAX_DEPTH} levels deep")
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return _to_python(loader, node, schema)
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to read") from None
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str, schema: Any = Job) -> dict[str, Any]:
    """A YAML mapping from `path`, or a UserError that names the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {err.start}): is it a YAML file?") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        data = load_yaml(text, f"{what} {path}", schema)
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


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optim": {"lr": 1e-3}}` → `{"optim.lr": 1e-3}` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def varying(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each job dict, its dotted keys whose values are not the same in all of them: what
    tells a sweep's tasks apart (`[{"optim.lr": 1e-05}, {"optim.lr": 3e-05}]`)."""
    flats = [flatten(job) for job in jobs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    varied = [k for k in keys if len({repr(flat.get(k)) for flat in flats}) > 1]
    return [{k: flat.get(k) for k in varied} for flat in flats]


def differing(jobs: list[dict[str, Any]]) -> list[str]:
    """varying() as overrides read (`optim.lr=1e-05`); "" where all are the same."""
    return [" ".join(f"{k}={v}" for k, v in values.items()) for values in varying(jobs)]


# --------------------------------------------------------------------------- factories


class UserConfig(TypedDict, total=False):
    """~/.config/ft/config.yaml."""

    factory_dirs: list[str]
    profile: str
    clusters: dict  # NAME → {host, user, port, ft, ft_home, profile, timeout}: `--cluster NAME` (launcher/remote.py)


def user_config() -> dict[str, Any]:
    """The user's ft config (`factory_dirs:`, `profile:`), its values checked."""
    path = paths.config_dir() / "config.yaml"
    if not path.is_file():
        return {}
    data = read_yaml(path, "ft config", schema=UserConfig)
    problems = [f"ft config {path}: unknown key {key!r}; it may hold {', '.join(UserConfig.__annotations__)}"
                for key in data if key not in UserConfig.__annotations__]
    dirs = data.get("factory_dirs")
    if dirs is not None and (not isinstance(dirs, list) or not all(isinstance(d, str) and d for d in dirs)):
        problems.append(f"ft config {path}: factory_dirs must be a list of folders")
    if data.get("profile") is not None and not isinstance(data["profile"], str):
        problems.append(f"ft config {path}: profile must be the path of a cluster profile")
    clusters = data.get("clusters")
    if clusters is not None and (not isinstance(clusters, dict)
                                 or not all(isinstance(k, str) and isinstance(v, dict) for k, v in clusters.items())):
        problems.append(f"ft config {path}: clusters must map a name to {{host, user, port, ft, ft_home, profile}}")
    if problems:
        raise UserError(*problems)
    return data


def factory_dirs() -> list[tuple[Path, str]]:
    """Folders searched for factories, first match wins: $FT_FACTORY_PATH, the user's
    config (`factory_dirs:`), then the built-in ones."""
    dirs: list[tuple[Path, str]] = []
    for entry in os.environ.get(FACTORY_PATH_ENV, "").split(os.pathsep):
        if entry:
            dirs.append((expand(entry), f"${FACTORY_PATH_ENV}"))
    for entry in user_config().get("factory_dirs") or []:
        dirs.append((expand(str(entry)), "user config"))
    dirs.append((paths.factories_dir(), "built-in"))
    return dirs


def factory_source(path: Path) -> str:
    """Where a factory file was found: `built-in`, `$FT_FACTORY_PATH`, `user config`, or `file`."""
    for folder, source in factory_dirs():
        if folder.expanduser().resolve() == path.resolve().parent:
            return source
    return "file"


def looks_like_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or os.sep in spec


def find_factory(spec: str, relative_to: Path | None = None) -> Path:
    """The YAML file for a factory name or path."""
    if looks_like_path(spec):
        candidate = expand(spec)
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


def load_factory(spec: str, relative_to: Path | None = None, _seen: tuple[Path, ...] = (),
                 notes: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    """A factory as a plain dict with its `extends:` chain merged in (the parent first).

    A NeMo AutoModel recipe is translated first (launcher.translate); its translation, one
    line per key, is appended to `notes`."""
    path = find_factory(spec, relative_to).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise UserError(f"factory `extends:` chain loops: {chain}")
    raw = read_yaml(path, "factory")
    if translate.is_automodel(raw):
        translation = translate.translate_automodel(raw, f"AutoModel recipe {path}")
        if translation.refused:
            error = UserError(*translation.refused, hint="these AutoModel settings have no ft equivalent: remove "
                              "them (`ft show --factory FILE --explain` lists what ft has)")
            error.notes = [f"translated the NeMo AutoModel recipe {path} into an ft job:",
                           *(f"  {line}" for line in translation.lines)]
            raise error
        raw = translation.data
        if notes is not None:
            notes.append(f"translated the NeMo AutoModel recipe {path} into an ft job:")
            notes.extend(f"  {line}" for line in translation.lines)
    data = _layer(raw, str(path))
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
        return expand(explicit), True
    if os.environ.get(PROFILE_ENV):
        return expand(os.environ[PROFILE_ENV]), True
    configured = user_config().get("profile")
    if configured:
        return expand(str(configured)), True
    return paths.config_dir() / "cluster.yaml", False


def load_profile(explicit: str | None = None) -> tuple[dict[str, Any], Path | None]:
    """Site defaults (account, partition, image, binds, modules...) as a partial job."""
    path, named = profile_path(explicit)
    if path == Path(os.devnull):  # `--profile /dev/null`: no site defaults at all
        return {}, None
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


# Words other tools use for a setting ft names differently: `optim.learning_rate` → `optim.lr`.
SYNONYMS = {
    "learning_rate": "lr", "lr_schedule": "lr_scheduler", "scheduler": "lr_scheduler",
    "warmup": "warmup_steps", "num_warmup_steps": "warmup_steps", "warmup_iters": "warmup_steps",
    "steps": "max_steps", "max_iters": "max_steps", "train_steps": "max_steps", "num_steps": "max_steps",
    "epochs": "num_epochs", "num_train_epochs": "num_epochs",
    "batch_size": "global_batch_size", "train_batch_size": "global_batch_size",
    "micro_batch": "micro_batch_size", "per_device_train_batch_size": "micro_batch_size",
    "seq_length": "max_seq_length", "max_length": "max_seq_length", "seq_len": "max_seq_length",
    "block_size": "max_seq_length", "gpus": "devices", "gpus_per_node": "devices", "nodes": "num_nodes",
    "r": "dim", "rank": "dim", "lora_r": "dim", "lora_rank": "dim", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "model_name": "path",
    "model_name_or_path": "path", "model_path": "path", "dataset": "path", "data_path": "path",
    "save_steps": "every_steps", "save_every": "every_steps", "eval_steps": "val_every_steps",
    "eval_every": "val_every_steps", "val_check_interval": "val_every_steps", "max_grad_norm": "grad_clip",
    "gradient_clip_val": "grad_clip", "logging_steps": "log_every_steps", "precision": "dtype",
    "torch_dtype": "dtype", "walltime": "time", "time_limit": "time",
}


def closest_keys(dotted: str) -> list[str]:
    """Valid keys a mistyped one probably meant: synonyms, whole-path matches, then siblings."""
    keys = valid_keys()
    parent, _, last = dotted.rpartition(".")
    synonym = SYNONYMS.get(last.lower())
    found = []
    if synonym:
        # In the section given if it has it, else wherever it lives (`steps` → trainer.max_steps).
        here = f"{parent}.{synonym}" if parent else synonym
        found = [here] if here in keys else [k for k in keys if k.rpartition(".")[2] == synonym]
    # A key that exists under another section (`max_steps` for `trainer.max_steps`).
    found += [k for k in keys if k.rpartition(".")[2] == last and k not in found]
    found += [k for k in difflib.get_close_matches(dotted, keys, n=3, cutoff=0.6) if k not in found]
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    for match in difflib.get_close_matches(last, [k.rpartition(".")[2] for k in siblings], n=3, cutoff=0.5):
        candidate = f"{parent}.{match}" if parent else match
        if candidate not in found:
            found.append(candidate)
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
    note: str | None = None  # how a NeMo-style word was read (launcher.translate)


_NULL_WORDS = ("", "~", "null", "Null", "NULL")


# Settings whose values are module-name globs, which may start with `*`.
GLOB_KEYS = ("peft.target_modules", "peft.exclude_modules")


def parse_value(text: str, key: str = "value", globs: bool = False) -> Any:
    """A command-line value read as YAML; text that is not valid YAML stays a string.

    Anchors and aliases are refused: on a command line they are a paste gone wrong. Except a
    lone `*...` given to a setting of name globs (`peft.target_modules=*_proj`): that is the
    glob the user wrote, read as text (nothing is expanded either way)."""
    try:
        events = list(yaml.parse(text, Loader=_Yaml12Loader))
    except yaml.YAMLError:
        return text
    nodes = [e for e in events if isinstance(e, yaml.NodeEvent)]
    if globs and len(nodes) == 1 and isinstance(nodes[0], yaml.AliasEvent):
        return text
    if any(isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None) for e in events):
        raise UserError(f"{key}={text}: YAML anchors and aliases (&name, *name) are not read in "
                        "overrides; quote the value if it is text")
    try:
        return load_yaml(text, f"override {key}")
    except yaml.YAMLError:
        return text


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


def _takes_list(annotation: Any) -> bool:
    """Text or a list (`data.path=[a.jsonl,b.jsonl]`): a bracketed value is read as the list."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return any(get_origin(member) is list for member in members)


def _allows_none(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def parse_overrides(args: list[str]) -> tuple[list[Override], list[str]]:
    """`key=value` words into Overrides, and a problem for each malformed word."""
    overrides, problems = [], []
    for word in args:
        key, eq, text = word.partition("=")
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal's encoding could not read (Python keeps them as surrogates)
            shown = word.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            problems.append(f"{shown!r} is not UTF-8 text: write overrides in UTF-8 (check your terminal's "
                            "or script's encoding)")
            continue
        if word.startswith("-"):
            bare = word.lstrip("-")
            bare_key, has_value, bare_value = bare.partition("=")
            if bare_key not in valid_keys():  # `--max_steps=100` → trainer.max_steps=100
                bare_key = next(iter(closest_keys(bare_key.replace("-", "_"))), bare_key)
            good = f"{bare_key}={bare_value if has_value else 'VALUE'}"
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
        if key == "model.pretrained_model_name_or_path":
            key = "model.path"  # text, as model.path is: read like it
            note = "model.pretrained_model_name_or_path read as model.path"
        else:
            note = None
        quoted = text[:1] in ("'", '"')
        annotation = _field(Job, key.split("."))
        if _wants_text(annotation) and not quoted and not (text.startswith("[") and _takes_list(annotation)):
            # Free text is taken as written; `null` (or `~`, or nothing) still unsets an optional setting.
            value = None if _allows_none(annotation) and text in _NULL_WORDS else text
        else:
            try:
                value = parse_value(text, key, globs=key in GLOB_KEYS)
            except UserError as err:
                problems.extend(err.lines())
                continue
        pairs, said = translate.translate_override(key, value)
        note = note or said
        for index, (ft_key, ft_value) in enumerate(pairs):
            overrides.append(Override(ft_key, ft_value, word, note if index == 0 else None))
    return overrides, problems


def _switch(section: str, word: Any, existing: Any) -> Any:
    options = SWITCHES[section]
    choice = "none" if word is None else str(word).lower()
    if choice not in options:
        raise UserError(f"{section}={word!r}: choose one of {', '.join(options)}")
    preset = options[choice]
    if preset is None:
        return None
    word_key = next(iter(preset))  # the key the word sets: peft.method, objective.name
    if isinstance(existing, dict) and existing.get(word_key, choice) == choice:
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
                    problems.extend(err.lines())
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
    return schema.validate(drop_nulls(normalise_switches(data)))


def drop_nulls(data: dict[str, Any], model: type[BaseModel] = Job) -> dict[str, Any]:
    """`key: null` unsets what the layers below set: a recipe over its `extends:` parent, a
    profile, an override (`model.config=null`). A setting that cannot be null goes back to its
    default; one that can (`peft: null`, full SFT) keeps the null it was given. Inside a
    free mapping (`model.config`, `slurm.extra`) a null is a value and stays."""
    result = {}
    for key, value in data.items():
        info = model.model_fields.get(key) if isinstance(key, str) else None
        if info is None:
            result[key] = value
            continue
        if value is None and info.annotation is not Any and not _allows_none(info.annotation):
            continue
        inner = _unwrap(info.annotation)
        result[key] = drop_nulls(value, inner) if isinstance(value, dict) and _is_model(inner) else value
    return result


# --------------------------------------------------------------------------- resolve


@dataclass(frozen=True)
class Resolved:
    job: Job
    factory_path: Path
    profile_path: Path | None
    overrides: tuple[Override, ...]
    notes: tuple[str, ...] = ()  # how a foreign recipe or NeMo-style words were translated


def resolve(factory: str, overrides: list[str], profile: str | None = None) -> Resolved:
    """Factory < profile < command line, validated. Override syntax and key problems, and
    type problems, are each reported all at once."""
    parsed, problems = parse_overrides(overrides)
    notes: list[str] = []
    data, factory_file = load_factory(factory, notes=notes)
    notes += [o.note for o in parsed if o.note]
    site, site_path = load_profile(profile)
    merged, more = apply_overrides(deep_merge(normalise_switches(data), site), parsed)
    problems += more
    try:
        job = validate(merged)
    except UserError as err:
        problems += err.lines()
    if problems:
        error = UserError(*problems)
        error.notes = notes  # the translation of a foreign recipe, shown before what is wrong with it
        raise error
    return Resolved(job, factory_file, site_path, tuple(parsed), tuple(notes))
