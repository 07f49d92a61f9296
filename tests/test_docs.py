"""The documentation: the site builds with warnings as errors, the API reference covers every
module, the README stays short and keeps the CI's command, and the project's prose speaks to
users (never of how the project was built)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "dynamics", "probes", "experiments")


def modules_on_disk() -> set[str]:
    """Every module of the four packages; a package counts when its __init__.py has content."""
    found = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                if not path.read_text().strip():
                    continue
                parts = parts[:-1]
            found.add(".".join(parts))
    return found


def test_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing snippet, an unresolved cross-reference, a
    page left out of the navigation or a docstring griffe cannot read fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    site = tmp_path / "site"
    for page in ("getting-started", "concepts", "tutorials/own-analysis", "reference/dynamics/checkpoints",
                 "papers/ge2025-crosscoders", "benchmarks/2026-11-30-xeon"):
        assert (site / page / "index.html").is_file(), page
    # the reference is rendered from the docstrings, and the tutorials from the scripts themselves
    assert "memory-bounded chunks" in (site / "reference/dynamics/checkpoints/index.html").read_text()
    assert "linear_cka" in (site / "tutorials/own-analysis/index.html").read_text()


def test_reference_lists_every_module():
    listing = yaml.safe_load((REPO / "docs/reference/modules.yml").read_text())
    documented = [m for modules in listing["reference"].values() for m in modules]
    internal = set(listing.get("internal") or ())
    on_disk = modules_on_disk()
    assert len(documented) == len(set(documented)), "a module is listed twice in docs/reference/modules.yml"
    missing = sorted(on_disk - set(documented) - internal)
    assert not missing, f"add {missing} to docs/reference/modules.yml (reference, or internal with a reason)"
    gone = sorted((set(documented) | internal) - on_disk)
    assert not gone, f"{gone} are listed in docs/reference/modules.yml but do not exist; remove them"
    for package, modules in listing["reference"].items():
        assert all(m == package or m.startswith(package + ".") for m in modules), package


def test_readme_is_for_users():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    ci = (REPO / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci in readme, "the README's test command must be exactly the one .ci/run runs"
    assert "python -m experiments quickstart" in readme
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):  # links into the docs point at real files
        assert (REPO / target).exists(), target
    assert "mkdocs serve" in readme  # how to build and open the docs locally


# What the project's prose must never say: it speaks to users, not of how it was built.
# The first four are the check users run (`grep -rniE`), written here so that this file passes it.
BUILT = re.compile("|".join(["machine [AB]", "previous[ ]stop", "the[ ]issue", "the[ ]sketch", r"\bissue \d+",
                             "this[ ]session", "earlier rounds?"]), re.IGNORECASE)


def prose_files():
    yield from (REPO / name for name in ("README.md", "setup.cfg", "mkdocs.yml"))
    yield from (REPO / "docs").rglob("*.md")
    for package in (*PACKAGES, "tests", "docs"):
        yield from (p for p in (REPO / package).rglob("*.py") if p != Path(__file__).resolve())


def test_prose_never_speaks_of_how_it_was_built():
    found = [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
             for path in prose_files() for i, line in enumerate(path.read_text().splitlines(), 1)
             if BUILT.search(line)]
    assert not found, "\n".join(found)
