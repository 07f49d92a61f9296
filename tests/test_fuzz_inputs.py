"""Property-based tests (hypothesis) of everything a user types or writes: `--set` overrides of
every study, the CLI's arguments, and every JSONL file a study reads (probe labels, evaluate's
multiple-choice items, linear-origins' word pairs). Any input either runs or is refused with
`OntogenyError` (one line, exit 2); never another exception (a traceback), and never a run
folder claimed for input that is refused later.

To fuzz a new JSONL reader, add one line to `JSONL_READERS`: a name, the function reading a
path, `after(path, run_dir)` (the study's resolve, then the work it does with the file once the
run folder is claimed, which must not refuse what resolve accepted; or None) and a strategy of
well-typed rows.
"""
from __future__ import annotations

import json
import string
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.cli import registry
from experiments.cli.config import all_keys, override
from models.errors import OntogenyError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


# ----------------------------------------------------------------------------- --set
def _value_text():
    numbers = st.one_of(st.integers(-10**30, 10**30).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.sampled_from(["inf", "-inf", "nan", "1e400", "-0", "0x10", "1_000", "", " ", "None", "null",
                                         "true", "yes", "()", "[]", "(1,2)", "[1, 2]", "{}", "1,", ",,", "0.5e-320"]))
    return st.one_of(numbers, st.text(max_size=12), st.text(string.printable, max_size=30))


def _assignment(keys: list[str]):
    key = st.one_of(st.sampled_from(keys), st.text(max_size=10),
                    st.sampled_from(keys).map(lambda k: k.rsplit(".", 1)[0]),      # a group
                    st.sampled_from(keys).map(lambda k: k + ".x"))                   # below a leaf
    joined = st.tuples(key, st.sampled_from(["=", "= ", " =", "=="]), _value_text()).map("".join)
    return st.one_of(joined, st.text(max_size=15))                                  # no '=' at all


@pytest.mark.parametrize("study", registry.available())
def test_set_overrides_are_applied_or_refused_in_one_line(study):
    module = registry.load(study)
    preset = module.PRESETS["tiny"]

    @FAST
    @given(st.lists(_assignment(all_keys(preset)), max_size=4))
    def check(assignments):
        try:
            config = override(preset, assignments)
        except OntogenyError as e:  # one line, unless it quotes a value holding a newline (the CLI escapes it)
            assert str(e) and ("\n" not in str(e) or any("\n" in a or "\r" in a for a in assignments))
            return
        assert type(config) is type(preset)

    check()


def test_cli_arguments_run_or_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    """The whole command line of a study (its `run` replaced by a stub): exit 0 having run with a
    valid config, or exit 2 with one line and no run folder."""
    from experiments.__main__ import cli

    ran = []
    module = registry.load("pretrain")
    monkeypatch.setattr(module, "run", lambda config, folder: ran.append(config) or {"ok": 1.0})
    tokens = st.one_of(st.sampled_from(["--set", "--preset", "--out", "--help2", "-x", "tiny", "micro", "huge",
                                        "train.steps=3", "train.lr=0", "model.n_head=3", "data.corpus=synthetic"]),
                       st.text(string.printable, max_size=12).filter(lambda t: t not in ("-h", "--help")))

    @FAST
    @given(st.lists(tokens, max_size=6))
    def check(argv):
        out = tmp_path / uuid.uuid4().hex
        before = len(ran)
        code = cli(["pretrain", *argv, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        if code == 0:
            assert len(ran) == before + 1 and (out / "config.json").exists()
        else:
            assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err
            assert not out.exists()

    check()


# ----------------------------------------------------------------------------- JSONL inputs
def _probe_labels(path: Path):
    from experiments.studies.probe import study

    return study.read_labels(str(path))


def _evaluate_tasks(path: Path):
    from experiments.studies.evaluate import study

    return study.read_tasks(path)


def _probe_after(path: Path, run_dir: Path) -> None:
    """What `probe` does with a labels file on a run: resolve (before any folder), then, once the
    folder is claimed, the examples and the split."""
    import dataclasses

    from dynamics import run_tokenizer
    from dynamics.checkpoints import load_model_config
    from experiments.studies.probe import study

    config = dataclasses.replace(study.Config(), run=str(run_dir), labels=str(path), window=8)
    try:
        study.resolve(config)
    except OntogenyError:
        return
    tokens, lengths, y, classes, groups = study.examples(config, run_dir, run_tokenizer.load_tokenizer(run_dir),
                                                         load_model_config(run_dir), None)
    study.probe_data(config, tokens, lengths, y, groups)


def _evaluate_after(path: Path, run_dir: Path) -> None:
    """What `evaluate` does with a tasks file on a run: resolve, then the batch of choices."""
    import dataclasses

    from dynamics import run_tokenizer
    from dynamics.checkpoints import load_model_config
    from experiments.studies.evaluate import study

    config = dataclasses.replace(study.Config(), run=str(run_dir), tasks=str(path))
    try:
        study.resolve(config)
    except OntogenyError:
        return
    context = load_model_config(run_dir).context
    seq_len = min(config.seq_len or context, config.max_seq_len, context)  # as evaluate's run cuts them
    study.choice_batch(study.read_tasks(path), run_tokenizer.load_tokenizer(run_dir), seq_len)


def _cognition_tasks(path: Path):
    from dynamics import mc_tasks

    return mc_tasks.read_tasks(path)


def _word_pairs(path: Path):
    from probes import word_pairs

    return word_pairs.read_pairs(path)


def _word_pairs_after(path: Path, run_dir: Path) -> None:
    """What `linear-origins --set run=RUN --set pairs=FILE` does: its resolve (the pairs read and
    tokenized), then, once the folder is claimed, the arrays every checkpoint reads."""
    import dataclasses

    from experiments.studies.linear_origins import on_run, study

    config = dataclasses.replace(study.Config(), run=str(run_dir), pairs=str(path))
    try:
        prep = on_run.prepare(config)
    except OntogenyError:
        return
    on_run.pair_data(prep["pairs"], prep["n_vocab"], config)


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                               st.text(max_size=20)),
                     lambda inner: st.one_of(st.lists(inner, max_size=4),
                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
_words = st.text("\n .abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=30)  # a char run's own alphabet (the micro run's)
_short = st.integers(0, 39).flatmap(lambda i: st.text(min_size=1, max_size=30) if i == 0 else _words)  # rarely outside
_label_row = st.fixed_dictionaries({"text": _short, "label": st.one_of(st.integers(-1, 3), st.sampled_from("ab"))})
_task_row = st.integers(2, 4).flatmap(lambda k: st.fixed_dictionaries({
    "context": _short, "choices": st.lists(_short, min_size=k, max_size=k), "answer": st.integers(0, k - 1)}))
_mc_row = st.integers(2, 5).flatmap(lambda k: st.one_of(
    st.fixed_dictionaries({"question": _short, "choices": st.lists(_short, min_size=k, max_size=k),
                           "answer": st.one_of(st.integers(0, k - 1), st.sampled_from("ABCDE"[:k]))}),
    st.fixed_dictionaries({"question": _short, "answerKey": st.sampled_from("ABCDE"[:k]),
                           "choices": st.fixed_dictionaries({"text": st.lists(_short, min_size=k, max_size=k),
                                                             "label": st.just(list("ABCDE"[:k]))})})))
_letters = st.integers(0, 39).flatmap(lambda i: st.text(min_size=1, max_size=6) if i == 0
                                     else st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=2))
_pairs_row = st.fixed_dictionaries({"concept": st.text(min_size=1, max_size=8),
                                    "pairs": st.lists(st.lists(_letters, min_size=2, max_size=2), min_size=1, max_size=6)})

# name -> (reader(path), after(path, run_dir) or None, a strategy of well-typed rows): one line per
# JSONL input a user writes. `after` is the study's resolve and then the work it does with the
# file once the run folder is claimed, which must not refuse what resolve accepted.
JSONL_READERS = {
    "probe labels": (_probe_labels, _probe_after, _label_row),
    "evaluate tasks": (_evaluate_tasks, _evaluate_after, _task_row),
    "word pairs": (_word_pairs, _word_pairs_after, _pairs_row),
    # which items a run can read (its tokenizer and context) is settled when cognition starts
    "cognition tasks": (_cognition_tasks, None, _mc_row),
}

_garbage = st.sampled_from(["[" * 5000 + "]" * 5000, "1" * 5000, '{"text": "a", "label": ' + "9" * 5000 + "}",
                            '{"answer": 1e999}', '{"text": "\\ud800", "label": 1}', "NaN", "\x00", "\ufeff{}", "[]", "{}"])


def _files(row):
    line = st.one_of(row.map(json.dumps), row.map(json.dumps), _json.map(json.dumps), st.text(max_size=40), _garbage)
    return st.one_of(st.lists(line, max_size=40).map(lambda rows: "\n".join(rows).encode("utf-8", "surrogatepass")),
                     st.lists(row.map(json.dumps), min_size=14, max_size=40).map(lambda r: "\n".join(r).encode()),
                     st.binary(max_size=200))


@pytest.mark.parametrize("name", JSONL_READERS)
def test_jsonl_inputs_are_read_or_refused_in_one_line(name, tmp_path):
    reader, _, row = JSONL_READERS[name]
    path = tmp_path / "input.jsonl"

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(_files(row))
    def check(content):
        path.write_bytes(content)
        try:
            reader(path)
        except OntogenyError as e:
            assert "\n" not in str(e)

    check()


@pytest.mark.parametrize("name", [n for n, (_, after, _) in JSONL_READERS.items() if after is not None])
def test_accepted_jsonl_inputs_never_fail_after_the_folder_is_claimed(name, micro_run, tmp_path):
    """Whatever a study's resolve accepts, the work it does after claiming the folder accepts too."""
    import shutil

    _, after, row = JSONL_READERS[name]
    run_dir = tmp_path / "run"
    shutil.copytree(micro_run, run_dir)
    path = tmp_path / "input.jsonl"

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(row.map(json.dumps), min_size=14, max_size=40).map(lambda r: "\n".join(r).encode()))
    def check(content):
        path.write_bytes(content)
        after(path, run_dir)

    check()
