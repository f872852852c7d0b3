"""The package imports one way: io → scan → shared pieces → data → jobs → bench → cli (see README, Layout).

Every import statement is read with `ast`, in-function imports included, so a lazy import cannot hide an
upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "medfake"

# Lowest first. A module may import from its own layer or from any layer below it, never above; jobs of the
# same layer (one package per job) may not import each other. Protection optimises through the tamperer, so
# it sits above it.
LAYERS: list[set[str]] = [
    {"medfake", "errors", "scan", "runinfo", "configs"},
    {"io"},
    {"stats", "render", "report", "lungmask", "cad", "judges", "training", "nn"},
    {"data"},
    {"tamper", "detect"},
    {"protect", "attack"},
    {"bench", "viewer"},
    {"cli"},
]
JOBS = LAYERS[4] | LAYERS[5]


def unit_of(module: str) -> str:
    """`medfake.tamper.pipeline` → `tamper`; `medfake` → `medfake`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def rank(unit: str) -> int:
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise KeyError(f"medfake.{unit} is in no layer: add it to LAYERS and to the README's layout")


def imported_modules(source: str, module: str, is_package: bool) -> list[str]:
    """Absolute names of the medfake modules a source file imports (relative imports resolved)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append(name)
    return [name for name in found if name == "medfake" or name.startswith("medfake.")]


def upward_imports(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Every import that runs up a layer or across jobs; `sources` maps module name → (source, is_package)."""
    problems = []
    for module, (source, is_package) in sorted(sources.items()):
        here = unit_of(module)
        for target in imported_modules(source, module, is_package):
            there = unit_of(target)
            if there == here:
                continue
            if rank(there) > rank(here):
                problems.append(f"{module} imports {target} (layer {rank(there)} above {rank(here)})")
            elif here in JOBS and there in JOBS and rank(here) == rank(there):
                problems.append(f"{module} imports {target} (one job may not import another)")
    return problems


def package_sources() -> dict[str, tuple[str, bool]]:
    sources = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        sources[name] = (path.read_text(), is_package)
    return sources


def test_package_imports_run_one_way():
    sources = package_sources()
    assert len(sources) > 40  # the walk found the package
    assert upward_imports(sources) == []


def test_every_module_sits_in_a_layer():
    for module in package_sources():
        rank(unit_of(module))


def test_checker_flags_an_upward_import_in_a_synthetic_graph():
    graph = {
        "medfake.scan": ("import numpy\nfrom medfake.errors import MedfakeError\n", False),
        "medfake.io": ("from medfake.scan import Scan\n", True),
        "medfake.data.cohort": ("def later():\n    from medfake.tamper.run import tamper_file\n", False),
        "medfake.tamper.run": ("from ..detect import screen\nfrom . import pipeline\n", False),
        "medfake.detect.screen": ("from medfake.stats import delong_auc\n", False),
        "medfake.cli": ("from medfake.bench.matrix import run_matrix\n", True),
        "medfake.protect.optimize": ("from medfake.tamper.pipeline import tamper_scan\n", False),
        "medfake.attack.fields": ("from medfake.protect import optimize\n", False),
    }
    assert upward_imports(graph) == [
        "medfake.attack.fields imports medfake.protect (one job may not import another)",
        "medfake.data.cohort imports medfake.tamper.run (layer 4 above 3)",
        "medfake.tamper.run imports medfake.detect (one job may not import another)",
    ]
    del graph["medfake.data.cohort"], graph["medfake.tamper.run"], graph["medfake.attack.fields"]
    assert upward_imports(graph) == []


def test_cli_start_up_does_not_import_torch():
    """Every command's defaults come from torch-free config modules: `medfake convert` or `info` must not pay for
    `import torch` (seconds on a CPU machine); only the commands that run a network import it."""
    import subprocess
    import sys

    code = "import sys; from medfake.cli import _register; _register(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
