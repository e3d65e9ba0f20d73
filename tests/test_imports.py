"""The house's import rules, read from the source with `ast` (nothing is imported to check them).

Every import statement of every module under components/ and pipelines/ counts, the ones inside
functions too: a function-level import is still a dependency, only a later one.

    no cycle among these modules
    no module imports genray.pipelines.cli (only genray/__main__.py, the entry point nothing imports)
    components/ imports neither ray nor mlflow nor pipelines nor the genray API
    nothing imports the top-level names components or pipelines: they are genray.components and
    genray.pipelines (the installed wheel has no others)
    `python -m genray.pipelines.<job>` loads the job's module once (as __main__, never again by name)
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("genray", "components", "pipelines")


def module_name(path: Path) -> str:
    """The import name of a file: genray/x.py is genray.x, components/ and pipelines/ sit under
    genray (setup.py maps them there)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] != "genray":
        parts.insert(0, "genray")
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported_names(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(module, line) for every import statement in the file: `import a.b as c` names a.b;
    `from a import b` names a.b when that is a module, else a; relative imports are resolved
    against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                child = f"{source}.{alias.name}"
                found.append((child if child in known else source, node.lineno))
    return found


def import_graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """Edges between project modules, and every import (project or not) of each module as
    (module, line); a project import is named by the project module it loads."""
    modules = project_modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    every: dict[str, list[tuple[str, int]]] = {}
    for name, path in modules.items():
        every[name] = []
        for target, line in imported_names(name, path, known):
            # `import a.b.c` of a module we have, or the nearest enclosing one we have
            nearest = target
            while nearest and nearest not in known:
                nearest = nearest.rpartition(".")[0]
            every[name].append((nearest or target, line))
            if nearest and nearest != name:
                graph[name].add(nearest)
    return graph, every


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Each strongly connected component with more than one module (Tarjan), with one shortest
    cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                components.append(sorted(scc))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_one_cycle(graph, scc), scc) for scc in components]


def _one_cycle(graph: dict[str, set[str]], scc: list[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start, members = scc[0], set(scc)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return scc


def describe(found: tuple[list[str], list[str]], every: dict[str, list[tuple[str, int]]]) -> str:
    """a (line 12) -> b (line 40) -> a: where each step's import statement is; then every module
    of the component, when there are more than on the cycle."""
    cycle, component = found
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        lines = sorted({line for target, line in every[a] if target == b})
        steps.append(f"{a} (line {', '.join(map(str, lines))})")
    text = " -> ".join(steps + [cycle[-1]])
    if len(component) > len(cycle) - 1:
        text += f"   [strongly connected: {', '.join(component)}]"
    return text


# ----------------------------------------------------------------------------- the rules


def test_the_graph_reader_resolves_every_form_of_import(tmp_path, monkeypatch):
    pkg = tmp_path / "pipelines"
    (pkg / "serve").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "b.py", "serve/__init__.py", "serve/spec.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text("from genray.pipelines import b\nimport genray.pipelines.serve.spec as s\n"
                              "def f():\n    from .serve import spec\n    from . import b\n")
    (pkg / "serve" / "spec.py").write_text("from .. import a\nfrom ..b import thing\nimport numpy\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("pipelines",))
    graph, _ = import_graph()
    assert graph["genray.pipelines.a"] == {"genray.pipelines.b", "genray.pipelines.serve.spec"}
    assert graph["genray.pipelines.serve.spec"] == {"genray.pipelines.a", "genray.pipelines.b"}
    assert cycles(graph) == [(["genray.pipelines.a", "genray.pipelines.serve.spec", "genray.pipelines.a"],
                              ["genray.pipelines.a", "genray.pipelines.serve.spec"])]


def test_no_import_cycle_among_components_and_pipelines():
    graph, every = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (every import statement counts, in functions too):\n" + "\n".join(
        "  " + describe(c, every) for c in found)


def test_no_module_imports_the_cli():
    _, every = import_graph()
    offenders = [f"{m} (line {line})" for m, imports in every.items() for target, line in imports
                 if target == "genray.pipelines.cli" and m != "genray.__main__"]
    assert not offenders, "genray.pipelines.cli is the command line; jobs are imported by it, never the reverse: " + \
        ", ".join(offenders)


def test_components_import_neither_ray_nor_mlflow_nor_pipelines():
    _, every = import_graph()
    offenders = [f"{m} imports {target} (line {line})" for m, imports in every.items()
                 if m.startswith("genray.components") for target, line in imports
                 if target.split(".")[0] in ("ray", "mlflow") or target == "genray"
                 or target.startswith("genray.pipelines")]
    assert not offenders, "\n".join(offenders)


def test_nothing_imports_the_bare_layer_names():
    _, every = import_graph()
    offenders = [f"{m} imports {target} (line {line})" for m, imports in every.items()
                 for target, line in imports if target.split(".")[0] in ("components", "pipelines")]
    assert not offenders, "import genray.components / genray.pipelines instead:\n" + "\n".join(offenders)


# Run a job module as `python -m` does, asking only for --help, then list what got imported.
LOADED_ONCE = """
import runpy, sys
sys.argv = ["{job}", "--help"]
try:
    runpy.run_module("{job}", run_name="__main__", alter_sys=True)
except SystemExit as e:
    assert e.code == 0, e.code
print(sorted(m for m in sys.modules if m.startswith("genray.pipelines")))
"""


@pytest.mark.parametrize("job", ["genray.pipelines.evaluate", "genray.pipelines.tune", "genray.pipelines.train"])
def test_running_a_job_module_loads_it_once(job):
    proc = subprocess.run([sys.executable, "-c", LOADED_ONCE.format(job=job)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = eval(proc.stdout.strip().splitlines()[-1])
    assert job not in loaded, f"python -m {job} imported {job} a second time: {loaded}"
    assert "genray.pipelines.cli" not in loaded, loaded
    assert "usage: genray" in proc.stdout


def test_python_m_genray_is_the_genray_command():
    proc = subprocess.run([sys.executable, "-m", "genray", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(verb in proc.stdout for verb in ("train", "tune", "eval", "serve", "submit", "families"))
