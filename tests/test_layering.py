"""The packages form layers, models <- dynamics <- probes <- experiments: a module imports only
its own layer and the layers below, and no two modules import each other in a cycle."""
import ast
import pathlib
import re

import pytest

RANK = {"models": 0, "dynamics": 1, "probes": 2, "experiments": 3}
ROOT = pathlib.Path(__file__).resolve().parents[1]


MODULE_STRING = re.compile(r"^((?:models|dynamics|probes|experiments)(?:\.\w+)+)(?::\w+)?$")
CODE_IMPORT = re.compile(r"\b(?:from\s+((?:models|dynamics|probes|experiments)[\w.]*)\s+import\s+(\w+)"
                         r"|import\s+((?:models|dynamics|probes|experiments)[\w.]*))")


def module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def project_imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every reference to a project module in a file: imports (relative
    ones resolved, function-level ones included: hiding an import inside a function does not change
    the layering), module names in strings (`importlib.import_module("experiments.x")`, the
    registry's "module:function" entries) and imports inside code strings run by a subprocess."""
    found = []
    inside = path.resolve().is_relative_to(ROOT)
    own = module_name(path).split(".") if inside else [path.stem]
    package = own if path.name == "__init__.py" else own[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base:
                found.append((node.lineno, base))
                # `from dynamics import data` imports the module dynamics.data
                found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.strip()
            if (m := MODULE_STRING.match(text)):
                found.append((node.lineno, m.group(1)))
            for m in CODE_IMPORT.finditer(text):
                found += [(node.lineno, m.group(1)), (node.lineno, f"{m.group(1)}.{m.group(2)}")] if m.group(1) \
                    else [(node.lineno, m.group(3))]
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
    names = {module_name(path): path for _, path in modules()}
    # `from models import gpt` names the package `models` too; the submodule edge beside it is the
    # one that orders modules, so a package counts only where nothing finer names what is used
    graph = {}
    for mod, path in names.items():
        refs = {name for _, name in project_imports(path) if name != mod}
        graph[mod] = {name for name in refs & set(names)
                      if not (names[name].name == "__init__.py" and any(r.startswith(name + ".") for r in refs))}
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
    bad.write_text("def f():\n    from experiments.cli.config import ArgumentParser\n")
    assert project_imports(bad) == [(2, "experiments.cli.config"), (2, "experiments.cli.config.ArgumentParser")]


def test_the_checker_reads_strings_and_relative_imports():
    """A registry entry, an importlib string and a subprocess's code string are edges too, and a
    relative import inside a study's folder resolves to its absolute module."""
    path = ROOT / "experiments" / "studies" / "waves" / "study.py"
    edges = {name for _, name in project_imports(path)}
    assert "experiments.studies.waves.figures" in edges
    strings = ROOT / "tests" / "_strings_probe.py"
    strings.write_text('E = ("experiments.bench.core:core", "importlib")\n'
                       'C = "import json; from experiments.bench import core; core.x()"\n'
                       'import importlib\nimportlib.import_module("probes.linear")\n')
    try:
        edges = [name for _, name in project_imports(strings)]
    finally:
        strings.unlink()
    assert sorted(set(edges)) == ["experiments.bench", "experiments.bench.core", "probes.linear"]


def test_a_circle_through_a_registry_string_fails(tmp_path, monkeypatch):
    """A module named by a string that imports the module naming it is a circle."""
    import test_layering as me

    pkg = tmp_path / "experiments"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "reg.py").write_text('ENTRIES = {"x": "experiments.tool:main"}\n')
    (pkg / "tool.py").write_text("from experiments import reg\n")
    monkeypatch.setattr(me, "ROOT", tmp_path)
    monkeypatch.setattr(me, "RANK", {"experiments": 3})
    with pytest.raises(AssertionError, match="experiments.reg -> experiments.tool -> experiments.reg"):
        test_no_import_cycles_between_modules()


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
