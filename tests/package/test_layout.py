"""The floor plan, read from the code: every import under glora/ and vtab/ points down a layer,
no import sits inside a function, and no modules import each other in a circle.

Layers, bottom up (a module may import its own layer and those below it):

    errors    glora.errors
    method    glora (the package), glora.space, sampler, layer, ops, inject, merge, budget, search
    io        glora.io.*            writing safely
    export    glora.export.*        merged model -> timm folder, PEFT adapters
    vtab      vtab.*                data; beside export, it sees errors and io only
    run       glora.run.*           the two steps and their plumbing
    sweep     glora.sweep.*         orchestration
"""
import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

ALLOWED = {
    "errors": set(),
    "method": {"errors"},
    "io": {"errors"},
    "export": {"errors", "method", "io"},
    "vtab": {"errors", "io"},
    "run": {"errors", "method", "io", "export", "vtab"},
    "sweep": {"errors", "method", "io", "export", "vtab", "run"},
}
METHOD = {"glora", *(f"glora.{m}" for m in
                     ("space", "sampler", "layer", "ops", "inject", "merge", "budget", "search"))}
# Outside libraries that only the run plumbing and above may use.
NOT_BELOW_RUN = {"argparse", "yaml"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for top in ("glora", "vtab") for p in sorted((REPO / top).rglob("*.py"))}


def layer_of(module: str) -> str:
    if module == "glora.errors":
        return "errors"
    if module in METHOD:
        return "method"
    if module.startswith("vtab"):
        return "vtab"
    kind = module.split(".")[1]
    assert kind in ("io", "export", "run", "sweep"), f"{module} is in no layer of the floor plan"
    return kind


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported name, inside a function?) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = absolute(module, child.level, child.module)
                for alias in child.names:  # `from glora.run import supernet` imports a module
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in MODULES else base, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def absolute(module: str, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def project_imports(module: str) -> set[str]:
    return {name for name, _ in imports(module) if name in MODULES}


def test_every_module_is_in_a_layer():
    """Fails if a new module lands outside the layers above (it would escape every rule)."""
    assert len(MODULES) > 40
    assert {layer_of(m) for m in MODULES} == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    """Fails if the method imports the run plumbing, io or vtab; if io or vtab import the method;
    if anything below the sweep imports it; or if the method, io or export read argparse or YAML."""
    layer = layer_of(module)
    upward = sorted(f"{name} ({layer_of(name)})" for name in project_imports(module)
                    if layer_of(name) != layer and layer_of(name) not in ALLOWED[layer])
    assert upward == [], f"{module} ({layer}) imports upward"
    if layer in ("errors", "method", "io", "export"):
        assert {name.split(".")[0] for name, _ in imports(module)} & NOT_BELOW_RUN == set()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_project_import_inside_a_function(module):
    """Fails if a module dodges an import order with a function-local import of glora or vtab
    (outside libraries that are optional extras, such as peft or submitit, may be imported late)."""
    late = sorted(name for name, local in imports(module) if local and name.split(".")[0] in ("glora", "vtab"))
    assert late == []


def test_no_import_circle():
    """Fails if two or more modules import each other, directly or round a loop (the layer and
    its sampler once did)."""
    graph = {m: project_imports(m) - {m} for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(loop))
            if nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])


def test_the_rules_catch_what_they_forbid():
    """Fails if the reader misses imports: a function-local import, an upward one and a circle are
    all seen in a module written for the purpose."""
    source = "import glora.run.config\ndef f():\n    from glora.layer import GLoRALinear\n"
    tree = ast.parse(source)
    assert sum(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)) == 2
    assert layer_of("glora.run.config") == "run" and "run" not in ALLOWED["method"]
    assert ("glora.run.supernet", False) in imports("glora.sweep.plan")  # `from glora.run import supernet`
    assert ("vtab.tasks", False) in imports("vtab.mini.layout")  # `from ..tasks import ...`
