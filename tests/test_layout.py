"""The package's floors: what each may import, no cycles, and what importing a floor loads."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GROUND = {"raysweep", "raysweep.errors", "raysweep.choices", "raysweep.schema"}
FACES = {"raysweep.packets", "raysweep.attacks", "raysweep.models"}  # SPEC's contract names, handed on from core


def _modules() -> dict[str, Path]:
    """Every module of the installed package: raysweep/** and the scripts of analysis/ as raysweep.scripts."""
    found = {}
    for path in sorted((ROOT / "raysweep").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "analysis").glob("*.py")):
        found["raysweep.scripts" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from raysweep.core import trial`
    return names


def _internal(path: Path) -> set[str]:
    return {name for name in _imports(path) if name in MODULES}


def _floor(module: str) -> str:
    if module in GROUND:
        return "ground"
    if module in FACES:
        return "face"
    parts = module.split(".")
    return parts[1] if parts[1] in ("core", "run", "analysis", "scripts") else module  # else a module of its own


# Which floors each floor may import (itself and the ground always).
ALLOWED = {
    "core": set(),
    "face": {"core"},
    "raysweep.store": set(),
    "analysis": {"raysweep.store"},
    "scripts": {"analysis", "raysweep.store"},
    "run": {"core", "raysweep.store", "analysis"},
    "raysweep.cli": {"core", "run", "analysis", "scripts", "raysweep.store"},
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_the_floors_beneath_it(module: str) -> None:
    floor = _floor(module)
    assert floor in ALLOWED or floor == "ground", f"{module} is on no floor of tests/test_layout.py"
    allowed = ALLOWED.get(floor, set()) | {floor, "ground"}
    wrong = sorted(name for name in _internal(MODULES[module]) if _floor(name) not in allowed)
    assert not wrong, f"{module} ({floor}) imports {wrong}"


def test_no_import_cycles() -> None:
    graph = {module: _internal(path) - {module} for module, path in MODULES.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for name in graph[module]:
            if name != "raysweep":  # every module "imports" the package face, which imports nothing of it
                visit(name, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _floor(m) == "core"))
def test_core_never_names_ray_file_formats_pandas_or_ctypes(module: str) -> None:
    banned = {"ray", "pyarrow", "pandas", "ctypes", "polars", "duckdb"}
    named = {name.split(".")[0] for name in _imports(MODULES[module])}
    assert not named & banned, f"{module} imports {sorted(named & banned)}"


def _loads(code: str) -> set[str]:
    """The top-level packages in sys.modules after `code` runs in a fresh interpreter."""
    script = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def test_analysis_and_its_scripts_load_no_torch_and_no_ray() -> None:
    analysis = [m for m in MODULES if _floor(m) in ("analysis", "scripts")]
    loaded = _loads("\n".join(f"import {m}" for m in analysis))
    assert "pandas" in loaded and not loaded & {"torch", "ray"}


def test_the_core_loads_neither_ray_nor_pyarrow_nor_pandas() -> None:
    core = [m for m in MODULES if _floor(m) in ("core", "face")]
    loaded = _loads("\n".join(f"import {m}" for m in core))
    assert "torch" in loaded and not loaded & {"ray", "pyarrow", "pandas"}


def test_bad_values_fail_before_torch_pyarrow_or_ray_load() -> None:
    """Each is refused at `key=value` time (exit 2) by the config alone."""
    cases = [["epochs=0"], ["attacks="], ["seed=0,0"], ["loss_clip=-1"], ["weight_decay=-1"], ["device=tpu"],
             ["dims="], ["estimator=piecewise", "loss_clip=5"], ["spaces=color"], ["attacks=pgd:eps=1"],
             ["--executor", "local", "--address", "auto"]]
    code = ("from raysweep.cli import main\n"
            f"codes = [main(['run', *argv]) for argv in {cases!r}]\n"
            "assert codes == [2] * len(codes), codes")
    loaded = _loads(code)
    assert "raysweep" in loaded and not loaded & {"torch", "pyarrow", "ray", "pandas"}


def test_pyproject_installs_every_package_folder() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(pyproject["packages"])
    assert packages == {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert pyproject["package-dir"] == {"raysweep.scripts": "analysis"}


def test_the_figures_command_runs_the_scripts_a_researcher_opens() -> None:
    import raysweep.scripts.fig1

    assert Path(raysweep.scripts.fig1.__file__).resolve() == ROOT / "analysis" / "fig1.py"
