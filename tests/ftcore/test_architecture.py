"""The import structure: launcher → ftcore ← trainer ← fttools, no import cycle inside a
package, and nothing heavy on the login node (docs/architecture.md draws it).

Read from the source (every import statement, lazy ones inside functions included), so a new
module or a new import is covered without being named here.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ftcore import contract

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ftcore", "launcher", "trainer", "fttools")
# Which of ft's packages each package may import (itself always).
ALLOWED = {
    "ftcore": set(),
    "launcher": {"ftcore", "fttools"},  # fttools only lazily, from the CLI's model commands
    "trainer": {"ftcore"},
    "fttools": {"ftcore", "trainer"},
}
HEAVY = ("torch", "transformers", "peft", "matplotlib", "huggingface_hub", "safetensors", "tokenizers")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level names of everything `path` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_packages_below_it(package):
    wrong = {}
    for path in _modules(package):
        others = (_imports(path) & set(PACKAGES)) - ALLOWED[package] - {package}
        if others:
            wrong[str(path.relative_to(ROOT))] = sorted(others)
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: {wrong}"


def _own_imports(package: str, path: Path) -> set[str]:
    """The modules of `package` that `path` imports (absolute or relative, lazy ones included)."""
    modules = {p.stem for p in _modules(package)} - {"__init__"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(package + ".")}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 0 and (node.module or "").split(".")[0] == package):
                parts = (node.module or "").split(".") if node.level == 1 else node.module.split(".")[1:]
                if parts and parts[0]:
                    found.add(parts[0])
                else:  # `from . import a, b`
                    found |= {a.name for a in node.names}
    return (found & modules) - {path.stem}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package):
    """Within a package too, imports run one way: a cycle means two modules own one fact."""
    graph = {p.stem: _own_imports(package, p) for p in _modules(package) if p.stem != "__init__"}
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle in {package}/: {' → '.join(cycle)}"


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_cli_reaches_the_model_tools():
    users = [str(p.relative_to(ROOT)) for p in _modules("launcher") if "fttools" in _imports(p)]
    assert users == ["launcher/cli.py"]


def test_the_core_imports_nothing_heavy_even_lazily():
    heavy = {str(p.relative_to(ROOT)): sorted(_imports(p) & set(HEAVY)) for p in _modules("ftcore")}
    # Except the image contract's feature probes, inside functions that only `ft image check`
    # (in the image) and the trainer call: they probe those very packages. Its import stays light.
    assert set(heavy.pop("ftcore/contract.py")) <= {p.module for p in contract.REQUIRED}
    assert not {k: v for k, v in heavy.items() if v}


def test_importing_every_launcher_module_imports_nothing_heavy():
    """`ft --help` and `ft submit` stay fast: the commands that need torch import it themselves."""
    names = [f"launcher.{p.stem}" for p in _modules("launcher") if p.stem not in ("__main__",)]
    names += [f"ftcore.{p.stem}" for p in _modules("ftcore")]
    code = (f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\nprint(heavy)\nsys.exit(bool(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_trainer_needs_only_what_the_image_contract_lists():
    """Every third-party import under trainer/ and ftcore/ is a contract package (or the stdlib)."""
    known = {p.module for p in contract.REQUIRED + contract.OPTIONAL} | set(PACKAGES)
    outside = {}
    for package in ("trainer", "ftcore"):
        for path in _modules(package):
            extra = {n for n in _imports(path) if n not in sys.stdlib_module_names and n not in known}
            if extra:
                outside[str(path.relative_to(ROOT))] = sorted(extra)
    assert not outside, f"not in ftcore/contract.py: {outside}"


def test_readme_and_pyproject_state_the_image_contract():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The image contract"):]
    section = section[: section.find("\n## ", 5)]
    listed = set(re.findall(r"^- `([A-Za-z0-9_.-]+>=[0-9.]+)`", section, re.M))
    assert listed == {f"{p.dist}>={p.minimum}" for p in contract.REQUIRED}, "README's image contract list"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # The install hints ft prints for a missing extra come from contract.EXTRAS: it must match pyproject.
    for name, packages in contract.EXTRAS.items():
        assert sorted(extras[name]) == sorted(f"{p.dist}>={p.minimum}" for p in packages), name


def test_test_files_have_unique_names():
    """pytest imports test files by basename (no __init__.py under tests/): two files of one
    name in different folders make the second fail to collect."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path


def test_the_benches_import_nothing_from_the_tests():
    """A bench runs where the tests are not (a lent GPU machine, a user's node): what both need,
    the tiny model and its run, is `fttools.tiny`'s."""
    test_modules = {p.stem for p in (ROOT / "tests").rglob("*.py")} | {"tests"}
    wrong = {str(p.relative_to(ROOT)): sorted(_imports(p) & test_modules) for p in sorted((ROOT / "bench").glob("*.py"))}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"bench scripts import test modules: {wrong}"


def _scheduler_names() -> dict[str, set[str]]:
    """Each scheduler's name (and each record name of `ft train`) → the modules that may spell
    it: the one that defines its class, and the registry (launcher/scheduler.py)."""
    from launcher import scheduler

    targets = {**scheduler._REGISTRY, **scheduler._STARTED_BY}
    return {name: {target.partition(":")[0].replace(".", "/") + ".py", "launcher/scheduler.py"}
            for name, target in targets.items()}


# Calls that look a program up by its name (`shutil.which("srun")`): the command, not the scheduler.
COMMAND_LOOKUPS = {"which"}


def _called(call: ast.Call) -> str | None:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)


def _spelled_names(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) where `path` compares a value with a scheduler's name, passes one to a call, or
    defaults a parameter to one. `DistEnv.launcher` is rendezvous' own word for who set the rank
    variables (ftcore/rendezvous.py), not a scheduler's name: comparing it is not counted."""
    def constants(node: ast.AST) -> list[ast.Constant]:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return [item for item in items if isinstance(item, ast.Constant) and item.value in names]

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        spelled: list[ast.Constant] = []
        if isinstance(node, ast.Compare):
            if not (isinstance(node.left, ast.Attribute) and node.left.attr == "launcher"):
                for side in (node.left, *node.comparators):
                    spelled += constants(side)
        elif isinstance(node, ast.Call) and _called(node) not in COMMAND_LOOKUPS:
            for arg in (*node.args, *(k.value for k in node.keywords)):
                spelled += constants(arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for default in (*node.args.defaults, *node.args.kw_defaults):
                spelled += constants(default) if default is not None else []
        found += [(c.lineno, c.value) for c in spelled]
    return found


def test_no_scheduler_name_is_tested_outside_its_module():
    """The scheduler seam carries what a scheduler does: the launcher asks a job's scheduler
    (its capabilities, hints, time limit, `run`) instead of testing which one it is. Its name is
    spelled only where its class lives and in the registry."""
    owners = _scheduler_names()
    wrong = []
    for path in _modules("launcher"):
        module = str(path.relative_to(ROOT))
        for line, name in _spelled_names(path, set(owners)):
            if module not in owners[name]:
                wrong.append(f"{module}:{line}: {name!r}")
    assert not wrong, "scheduler names tested outside their module:\n" + "\n".join(wrong)


def test_the_scheduler_name_check_sees_comparisons_calls_and_defaults(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text('if executor != "slurm":\n    pass\n'
                      'x = launcher in ("srun", "other")\n'
                      'get("local")\n'
                      'def f(executor="torchrun"):\n    pass\n'
                      'ok = procs.launcher != "torchrun"\n'
                      'section = ("slurm", "data")\n'
                      'on_path = shutil.which("srun")\n')
    names = {"slurm", "srun", "local", "torchrun"}
    assert sorted(_spelled_names(source, names)) == [(1, "slurm"), (3, "srun"), (4, "local"), (5, "torchrun")]
