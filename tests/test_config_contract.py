"""The config contract: every key of every study is documented, shown by --help, and either
changes the run the study resolves or is refused with one line; nothing is accepted and ignored."""
import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

from models.errors import OntogenyError
from dynamics.runlog import to_jsonable
from experiments.cli import registry
from experiments.__main__ import cli
from experiments.cli.config import all_keys, field_types, help_rows, override, unused_keys

STUDIES = tuple(registry.quickstart_studies())
# other valid values of string keys (the generic candidates below cover numbers, flags and tuples)
STRINGS = {"arch": ["batchtopk", "relu"], "corpus": ["synthetic"], "f_kind": ["table"], "optimizer": ["adam", "sgd"],
           "within_mode": ["to_mean"], "ablation": ["mean"], "variant": ["shortest_path"],
           "answer_format": ["letter"], "pretrain_preset": ["micro"], "tokenizer": ["bytes"],
           "token_dtype": ["uint32"], "site": ["resid_post.0"], "series": ["planted"],
           "emergence_rule": ["steepest"], "emergence_strength": ["contribution"]}
REFERENCES = ("pretrain_run", "gpt_run", "path", "run")  # a run folder: the micro pretrain run (data.path: a text folder)
# settings a change needs to be valid at all (the micro run has 8 checkpoints), set on both sides
COMPANIONS = {("crosscoders", "pretrain_run"): ["crosscoder.n_snapshots=4"],
              ("crosscoders", "pretrain_preset"): ["crosscoder.n_snapshots=4"],
              ("crosscoders", "run"): ["crosscoder.n_snapshots=4"],
              # on run=..., passages and samples must fit the context (the micro run's is 32)
              ("waves", "run"): ["passage_length=24", "max_lag=16", "max_period=12", "sample_length=16"]}


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(_text(v) for v in value)
    return str(value)


def candidates(name: str, value, kind, micro_run) -> list:
    """Other values for a key, most likely valid first."""
    if name in REFERENCES:
        return [str(micro_run)]
    if kind is bool:
        return [not value]
    if kind is int:
        return [v for v in (value + 1, value * 2, value - 1, value // 2, 2, 1, 0, -1) if v != value]
    if kind is float:
        return [v for v in (value * 2, value / 2, value + 0.1, value - 0.1, 0.5, 0.1) if v != value]
    if kind is str:
        return [v for v in STRINGS.get(name, []) + ["KING", "x"] if v != value]
    if value == ():  # an empty tuple[str] (data.val_docs): one element
        return [("ROMEO",)]
    if isinstance(value, tuple) and value:  # tuple[...]: drop the last element, append one, change one
        step = value[-1] * 2 if isinstance(value[-1], (int, float)) and value[-1] else value[-1]
        if isinstance(value[0], str):
            extra = next((s for s in ("sgd", "adam", "gd", "ROMEO") if s not in value), "QUEEN")
            return [value + (extra,), value[:-1]]
        return [value[:-1], value + (step,), (value[0] + (1 if isinstance(value[0], int) else 0.5),) + value[1:]]
    return []


def resolved(module, config) -> str:
    return json.dumps(to_jsonable(module.resolve(config)), sort_keys=True, default=str)


def leaf_types(config, prefix=""):
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(leaf_types(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = (f.name, value, field_types(type(config))[f.name])
    return out


@pytest.fixture(scope="module")
def case_run(micro_run, tmp_path_factory):
    """The micro run with upper-case letters in its vocabulary (what gpt_run's case check needs)."""
    import shutil

    run = tmp_path_factory.mktemp("case") / "run"
    shutil.copytree(micro_run, run)
    chars = json.loads((run / "tokenizer.json").read_text())["chars"]
    (run / "tokenizer.json").write_text(json.dumps({"chars": chars + "".join(c.upper() for c in chars if c.isalpha())}))
    return run


def audit(study: str, micro_run) -> list[str]:
    """Problems with a study's keys: a key accepted with no effect on `resolve`, or with no valid
    alternative value to try. A refused override must be one line naming the key."""
    module = registry.load(study)
    problems = []
    for key, (name, value, kind) in leaf_types(module.PRESETS["tiny"]).items():
        base = override(module.PRESETS["tiny"], COMPANIONS.get((study, key), []))
        before = resolved(module, base)
        verdict = f"{key}: no valid other value tried"
        for candidate in candidates(name, value, kind, micro_run):
            try:
                changed = override(base, [f"{key}={_text(candidate)}"])
                after = resolved(module, changed)
            except OntogenyError as e:
                line = str(e)
                assert "\n" not in line and line, (key, line)
                if "drop this override" in line:  # refused as unused
                    assert key in line, line
                    verdict = None
                    break
                continue  # an invalid value: try another
            verdict = None if after != before else f"{key}={_text(candidate)} is accepted but changes nothing"
            break
        if verdict:
            problems.append(verdict)
    return problems


@pytest.mark.parametrize("study", STUDIES)
def test_every_key_changes_the_resolved_run_or_is_refused(study, micro_run, case_run):
    assert audit(study, case_run) == []


def test_the_audit_catches_keys_that_are_accepted_and_ignored(micro_run, monkeypatch):
    """Without its list of unused keys, cognition accepts eleven keys that change nothing."""
    from experiments.studies.cognition import study as cognition

    monkeypatch.setattr(cognition.Config, "unused", lambda self: {})
    problems = audit("cognition", micro_run)
    flagged = {p.split("=")[0] for p in problems}
    assert flagged == {"pretrain.seed", "sft.seed", "rl.seed", "pretrain.eval_every", "sft.eval_every",
                       "rl.eval_every", "pretrain.eval_batches", "sft.eval_batches", "rl.eval_batches",
                       "rl.batch_size", "model.vocab_size"}, problems


@pytest.mark.parametrize("study", STUDIES)
def test_every_key_has_help_and_is_listed_by_help(study, capsys):
    module = registry.load(study)
    config = module.PRESETS["tiny"]
    rows = help_rows(config)
    assert [r[0] for r in rows] == all_keys(config)
    assert [key for key, _, _, meaning in rows if not meaning.strip()] == []
    with pytest.raises(SystemExit) as done:
        cli([study, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    unused = unused_keys(config)
    for key, kind, default, meaning in rows:
        if key in unused:
            assert re.search(rf"not settable with these settings:.*\b{re.escape(key)}\b", out), key
        else:
            line = next((ln for ln in out.splitlines() if ln.split(" ", 3)[2:3] == [key]
                         or ln.strip().startswith(key + " ")), None)
            assert line is not None, f"{key} missing from --help"
            assert kind in line and default in line and meaning[:20] in line, line


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_key_is_read_somewhere(study):
    """A top-level key whose name is read nowhere outside its Config class is dead (a cheap static check)."""
    module = registry.load(study)
    own = inspect.getsource(module.Config)
    sources = [p.read_text() for d in ("experiments", "dynamics", "probes", "models")
               for p in (Path(__file__).parents[1] / d).rglob("*.py")]
    text = "\n".join(sources).replace(own, "")
    config = module.PRESETS["tiny"]
    by_name = {"sweep_lr_gd", "sweep_lr_sgd", "sweep_lr_adam"}  # Config.sweep_lrs reads f"sweep_lr_{kind}"
    dead = [f.name for f in dataclasses.fields(config) if f.name not in by_name
            and not re.search(rf"\.{f.name}\b|[\"']{f.name}[\"']", text)]
    assert dead == []


@pytest.mark.parametrize("typed,named", [
    ("grpo.group_size=1", "grpo.group_size=1"), ("sft.warmup=1000", "sft.warmup=1000"),
    ("rl.lr=-1", "rl.lr=-1.0"), ("pretrain.beta1=2", "pretrain.beta1"),
])
def test_errors_name_the_key_the_user_typed(typed, named):
    from experiments.studies.cognition import study as cognition

    with pytest.raises(OntogenyError) as e:
        override(cognition.PRESETS["tiny"], [typed])
    assert named in str(e.value) and not re.search(r"(?<!\w)(train|rl)\.", str(e.value).replace(typed.split(".")[0] + ".", ""))
