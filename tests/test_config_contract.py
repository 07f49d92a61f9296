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

STUDIES = tuple(registry.studies())
# other valid values of string keys (the generic candidates below cover numbers, flags and tuples)
STRINGS = {"arch": ["batchtopk", "relu"], "corpus": ["synthetic", "shakespeare"], "f_kind": ["table"], "optimizer": ["adam", "sgd"],
           "within_mode": ["to_mean"], "ablation": ["mean"], "variant": ["shortest_path"],
           "answer_format": ["letter"], "pretrain_preset": ["micro"], "tokenizer": ["bytes", "char"],
           "token_dtype": ["uint32"], "site": ["resid_post.1", "resid_post.0"], "multi_token": ["first", "mean"],
           "leading_space": ["never", "always"], "feature": ["mean"], "stage": ["sft"], "stages": ["sft"],
           "series": ["planted", "model"], "emergence_rule": ["steepest"], "emergence_strength": ["contribution"]}
REFERENCES = ("pretrain_run", "gpt_run", "path", "run")  # run folders (data.path: a folder of text files)
FILES = ("pairs", "labels", "text", "tasks")  # input files, two of each kind (`inputs`)
FILE_KEYS = {"test_tasks": "tasks"}  # other keys that take a file of one of those kinds
# Every mode of every study: (preset, overrides that switch it on). In each mode every key either
# changes the resolved run or is refused with one line. {run} / {other} are the two run folders,
# {pairs} etc. the input files; the micro run has 8 checkpoints and a context of 32.
MODES = {
    "pretrain": {"tiny": ("tiny", []), "synthetic": ("tiny", ["data.corpus=synthetic"]),
                 "your text": ("tiny", ["data.path={corpus}", "data.tokenizer=bytes"])},
    "linear-origins": {"tiny (sweep)": ("tiny", []), "no sweep": ("tiny", ["sweep=false"]),
                       "verdict table": ("verdicts", []), "gpt_run": ("tiny", ["gpt_run={run}"]),
                       "run": ("tiny", ["run={other}", "pairs={pairs}"])},
    "cognition": {"tiny": ("tiny", []), "run": ("tiny", ["run={other}"]),  # run=...: the world's items
                  "run with tasks": ("tiny", ["run={other}", "tasks={tasks}"]),
                  "stages": ("tiny", ["stages=base:{run},sft:{other}", "tasks={tasks}"])},
    "crosscoders": {"tiny": ("tiny", []), "pretrain_run": ("tiny", ["pretrain_run={run}", "crosscoder.n_snapshots=4"]),
                    "run": ("tiny", ["run={run}", "crosscoder.n_snapshots=4"]),
                    "direct": ("tiny", ["direct=true"]), "batchtopk": ("tiny", ["crosscoder.arch=batchtopk"]),
                    "planted": ("tiny", ["series=planted"])},
    "neuromfa": {"tiny": ("tiny", []), "pretrain_run": ("tiny", ["pretrain_run={run}"]),
                 "run": ("xiao2025", ["run={run}", "context=16"])},
    "waves": {"tiny": ("tiny", []), "pretrain_run": ("tiny", ["pretrain_run={run}"]),
              # on run=..., passages and samples must fit the context (the micro run's is 32)
              "run": ("tiny", ["run={run}", "prompts=the,cat", "passage_length=24", "max_lag=16", "max_period=12",
                               "sample_length=16"])},
    "evaluate": {"run": ("tiny", ["run={other}"])},
    "development": {"tiny": ("tiny", []), "pretrain_run": ("tiny", ["pretrain_run={run}"]),
                    "run": ("tiny", ["run={run}"])},  # {other} also holds an sft stage
    "probe": {"tiny": ("tiny", []), "run": ("tiny", ["run={run}"]),
              "run with labels": ("tiny", ["run={run}", "labels={labels}"])},
}
# settings a change needs to be valid at all: set on both sides (COMPANIONS), or with the change
# only, where the change switches the mode that reads them (WITH_CHANGE)
# ("*": in every mode of the study)
# (crosscoders needs none: its snapshot count fits the series it is given)
COMPANIONS = {  # the candidates of window (0 = the context) are 1 and 2 positions: CKA's must fit in them
              ("development", "*", "window"): ["cka_examples=64"]}
WITH_CHANGE = {**{("linear-origins", mode, "run"): ["pairs={pairs}"] for mode in ("tiny (sweep)", "no sweep",
                                                                                  "verdict table")},
               ("neuromfa", "tiny", "run"): ["context=16"],
               ("waves", "tiny", "run"): ["prompts=the,cat", "passage_length=24", "max_lag=16", "max_period=12",
                                          "sample_length=16"]}
REQUIRED = {("evaluate", "run")}  # a key every mode of the study sets


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(_text(v) for v in value)
    return str(value)


def candidates(name: str, value, kind, inputs) -> list:
    """Other values for a key, most likely valid first."""
    import typing

    if name in REFERENCES:
        return [r for r in (str(inputs["run"]), str(inputs["other"]), "") if r != value]
    if name in FILES or name in FILE_KEYS:
        return [str(f) for f in inputs[FILE_KEYS.get(name, name)] if str(f) != value]
    if kind is bool:
        return [not value]
    if kind is int:
        return [v for v in (value + 1, value * 2, value - 1, value // 2, 2, 1, 0, -1) if v != value]
    if kind is float:
        return [v for v in (value * 2, value / 2, value + 0.1, value - 0.1, 0.5, 0.1) if v != value]
    if kind is str:
        return [v for v in STRINGS.get(name, []) + ["KING", "x"] if v != value]
    if value == ():  # an empty tuple: one element (checkpoint steps, document names)
        return [(0,)] if typing.get_args(kind)[:1] == (int,) else [("ROMEO",)]
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
def inputs(micro_run, tmp_path_factory):
    """Two run folders (the micro run with upper-case letters added to its vocabulary, which
    gpt_run's case check needs, and the plain micro run with an sft stage too) and two files of
    each input kind, written for the micro run's lower-case character vocabulary."""
    import shutil

    root = tmp_path_factory.mktemp("contract")
    run, other = root / "case-run", root / "other-run"
    shutil.copytree(micro_run, run)
    chars = json.loads((run / "tokenizer.json").read_text())["chars"]
    (run / "tokenizer.json").write_text(json.dumps({"chars": chars + "".join(c.upper() for c in chars if c.isalpha())}))
    shutil.copytree(micro_run, other)
    shutil.copytree(other / "checkpoints" / "pretrain", other / "checkpoints" / "sft")
    files = {}
    for k in (1, 2):
        pairs = root / f"pairs{k}.jsonl"  # single characters: one token each for a character tokenizer
        pairs.write_text("".join(json.dumps({"concept": f"c{j}", "pairs": [[a, b] for a, b in zip(letters[::2],
                                                                                                   letters[1::2])]})
                                 + "\n" for j, letters in enumerate(("abcdef", "ghijkl" if k == 1 else "mnopqr"))))
        labels = root / f"labels{k}.jsonl"
        labels.write_text("".join(json.dumps({"text": "the cat sat " * (1 + i % 3), "label": (i + k) % 2}) + "\n"
                                  for i in range(24)))
        text = root / f"text{k}.txt"
        text.write_text("the cat sat on the mat and the dog ran to the cat\n" * (40 * k))
        tasks = root / f"tasks{k}.jsonl"
        tasks.write_text(json.dumps({"context": "the cat", "choices": [" sat", " ran"], "answer": k - 1}) + "\n")
        for name, path in (("pairs", pairs), ("labels", labels), ("text", text), ("tasks", tasks)):
            files.setdefault(name, []).append(path)
    corpus = root / "corpus"  # two documents: one holds out for validation
    corpus.mkdir()
    for k in (1, 2):
        (corpus / f"doc{k}.txt").write_text("the cat sat on the mat and the dog ran to the cat\n" * (30 * k))
    return {"run": run, "other": other, "corpus": corpus, **files}


def _get(config, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _fill(assignments, inputs) -> list[str]:
    names = {"run": inputs["run"], "other": inputs["other"], "corpus": inputs["corpus"],
             **{k: inputs[k][0] for k in FILES}}
    return [a.format(**names) for a in assignments]


def audit(study: str, inputs, mode: str = "tiny") -> list[str]:
    """Problems with a study's keys in one mode: a key accepted with no effect on `resolve`, or
    with no valid alternative value to try. A refused override must be one line naming the key."""
    module = registry.load(study)
    preset, switch = MODES[study][mode]
    mode_config = override(module.PRESETS[preset], _fill(switch, inputs))
    problems = []
    for key, (name, value, kind) in leaf_types(mode_config).items():
        companions = COMPANIONS.get((study, mode, key), COMPANIONS.get((study, "*", key), []))
        base = override(mode_config, _fill(companions, inputs))
        before = resolved(module, base)
        verdict = f"{key}: no valid other value tried"
        for candidate in candidates(name, _get(base, key), kind, inputs):
            try:
                changed = override(base, [f"{key}={_text(candidate)}"] +
                                   _fill(WITH_CHANGE.get((study, mode, key), []), inputs))
                after = resolved(module, changed)
            except OntogenyError as e:
                line = str(e)
                assert "\n" not in line and line, (key, line)
                if "drop this override" in line or "not both" in line:  # refused: unused, or exclusive of another key
                    assert key.split(".")[-1] in line, line
                    verdict = None
                    break
                continue  # an invalid value: try another
            if after != before:
                verdict = None
                break
            verdict = f"{key}={_text(candidate)} is accepted but changes nothing"  # (on this run): try another
        if verdict:
            problems.append(f"[{mode}] {verdict}")
    return problems


CASES = [(study, mode) for study in STUDIES for mode in MODES.get(study, {"tiny": None})]


@pytest.mark.parametrize("study,mode", CASES)
def test_every_key_changes_the_resolved_run_or_is_refused(study, mode, inputs):
    assert study in MODES, f"{study} has no row in MODES: list its modes (tiny preset, run=..., ...)"
    assert audit(study, inputs, mode) == []


@pytest.mark.parametrize("study", STUDIES)
def test_every_mode_switch_is_covered(study, inputs):
    """Every key that switches a study's mode (a run folder, a labels file, a preset flag) takes
    at least two values across the study's MODES, so each side of the switch is audited."""
    module = registry.load(study)
    configs = [override(module.PRESETS[preset], _fill(switch, inputs)) for preset, switch in MODES[study].values()]
    fields = {f.name for f in dataclasses.fields(configs[0])}
    switches = (set(REFERENCES) - {"path"} | {"labels", "pairs"} | set(getattr(module, "FLAGS", {}).values())) & fields
    single = [k for k in sorted(switches - {k for s, k in REQUIRED if s == study}) if len({json.dumps(to_jsonable(getattr(c, k))) for c in configs}) < 2]
    assert single == [], f"{study}: no mode sets {single}; add one to MODES"


def test_the_audit_catches_keys_that_are_accepted_and_ignored(inputs, monkeypatch):
    """Without its list of unused keys, cognition accepts eleven keys that change nothing."""
    from experiments.studies.cognition import study as cognition

    monkeypatch.setattr(cognition.Config, "unused", lambda self: {})
    problems = audit("cognition", inputs)
    flagged = {p.split("] ")[1].split("=")[0] for p in problems}
    assert flagged == {"pretrain.seed", "sft.seed", "rl.seed", "pretrain.eval_every", "sft.eval_every",
                       "rl.eval_every", "pretrain.eval_batches", "sft.eval_batches", "rl.eval_batches",
                       "rl.batch_size", "model.vocab_size"}, problems


def test_the_audit_catches_a_mode_that_ignores_a_key(inputs, monkeypatch):
    """Without its list of unused keys, neuromfa on run=... accepts its training keys and ignores them."""
    from experiments.studies.neuromfa import study as neuromfa

    monkeypatch.setattr(neuromfa.Config, "unused", lambda self: {})
    problems = audit("neuromfa", inputs, "run")
    assert any(p.startswith("[run] train.lr=") for p in problems), problems
    assert any(p.startswith("[run] widths=") for p in problems), problems


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
