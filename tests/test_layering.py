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


def private_uses(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, name) of every private name (`_x`, not dunder) this file takes from another project
    module: `from dynamics.runlog import _primary`, or `members._shard` on an imported module."""
    tree = ast.parse(path.read_text())
    private = lambda name: name.startswith("_") and not name.startswith("__")
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {(a.asname or a.name.split(".")[0]) for a in node.names if a.name.split(".")[0] in RANK}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in RANK:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if private(a.name)]
            modules |= {a.asname or a.name for a in node.names}   # may be a module (`from dynamics import members`)
    found += [(node.lineno, f"{node.value.id}.{node.attr}") for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in modules and private(node.attr)]
    return sorted(found)


def test_no_private_name_is_used_across_modules():
    used = [f"{path.relative_to(ROOT)}:{line} uses {name}" for _, path in modules() for line, name in private_uses(path)]
    assert not used, "\n".join(used)


def test_the_checker_sees_a_private_import_and_attribute(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from dynamics.runlog import _primary, RunFolder\nfrom dynamics import members as m\n"
                   "import dynamics.data\nm._shard(1)\nm.__doc__\nself._x = 1\n")
    assert private_uses(bad) == [(1, "dynamics.runlog._primary"), (4, "m._shard")]
