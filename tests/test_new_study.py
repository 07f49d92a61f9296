"""Adding a study is copying a folder and adding one registry line: the copy imports its own
modules (relative imports inside the folder), runs through the CLI and writes its run folder."""
import json
import pathlib
import shutil
import sys
from types import MappingProxyType

from experiments.__main__ import main
from experiments.cli import registry
from experiments.studies.linear_origins import study as original

SMALL = ["problem.n_concepts=2", "learner.d=4", "learner.hidden=16", "train.steps=32", "n_random_pairs=8",
         "sweep=false"]


def test_a_copied_study_folder_with_one_registry_line_runs(tmp_path, monkeypatch, capsys):
    root = tmp_path / "labstudies"
    shutil.copytree(pathlib.Path(original.__file__).parent, root / "copied", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "ENTRIES", MappingProxyType(
        {**registry.ENTRIES, "copied": registry.Entry("labstudies.copied.study")}))   # the one line

    out = tmp_path / "run"
    argv = ["copied", "--out", str(out)] + [a for s in SMALL for a in ("--set", s)]
    assert main(argv) == 0
    copied = sys.modules["labstudies.copied.study"]
    assert copied is not original and copied.__file__.startswith(str(root))
    assert sys.modules["labstudies.copied.figures"].__file__.startswith(str(root))   # its own helpers
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "config.json").read_text())["experiment"] == "copied"
    assert summary["predictions_total"] == 5 and (out / "figures").is_dir()
    main([])
    assert "copied" in capsys.readouterr().out

