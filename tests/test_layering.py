"""The packages form layers, models <- dynamics <- probes <- experiments: a module imports only
its own layer and the layers below, and no two modules import each other in a cycle."""
import ast
import pathlib

RANK = {"models": 0, "dynamics": 1, "probes": 2, "experiments": 3}
ROOT = pathlib.Path(__file__).resolve().parents[1]


def project_imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import of a project package in a file, function-level
    imports included (hiding an import inside a function does not change the layering)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from dynamics import data` imports the module dynamics.data
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in RANK]


def modules():
    for pkg in RANK:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield pkg, path


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{path.relative_to(ROOT)}:{line} imports {name}"
              for pkg, path in modules() for line, name in project_imports(path)
              if RANK[name.split(".")[0]] > RANK[pkg]]
    assert not upward, "\n".join(upward)


def test_no_import_cycles_between_modules():
    names = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
             for _, path in modules()}
    # edges to a bare package (`from models import gpt` names `models` too) say nothing about
    # the order of modules; the submodule edge beside it does
    graph = {mod: {name for _, name in project_imports(path) if name in names and name != mod and name not in RANK}
             for mod, path in names.items()}
    state, cycles = {}, []

    def visit(mod, stack):
        state[mod] = "open"
        for dep in sorted(graph[mod]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from experiments.config import require\n")
    assert project_imports(bad) == [(2, "experiments.config"), (2, "experiments.config.require")]
