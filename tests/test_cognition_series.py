"""Cognition on imported checkpoint series: each measure against an independent reference (numpy
and scikit-learn for the probes, a plain loop of full `models.apply` forwards for the letters and
the decoded answers), stage discovery, the config contract in series mode, and an end-to-end run
on a multi-stage series built from two imported fixture suites (OLMo-2, GPT-NeoX)."""
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import models
from dynamics import checkpoints as ck
from dynamics import mc_tasks as mt
from dynamics.data import CharTokenizer
from dynamics.run_tokenizer import load_tokenizer
from dynamics.runlog import RunFolder
from experiments.cli.config import override
from experiments.studies.cognition import stages as stage_list
from experiments.studies.cognition import study as cog
from experiments.tools.import_suite import main as import_main
from models.errors import OntogenyError
from probes import mc_answers, mc_probes
from probes.layer_probes import pad_tokens

HF = Path(__file__).parent / "fixtures" / "hf"
CHARS = " \n.?:ABCDEQabcdefghijklmnopqrstuvwxyz"   # within every fixture's vocabulary (76 to 100)
WORDS = ["red", "sky", "sea", "cat", "dog", "hen", "sun", "ice", "oak"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """neox: pretrain (0, 100, 200) and sft (100, 200) series in one run; llama, olmo2 and
    baichuan2 (a normalised head): one series each; all read text with a character tokenizer;
    tasks: 24 plain items of 2-4 choices."""
    root = tmp_path_factory.mktemp("series")
    assert import_main(["--from", str(HF / "neox_rot25_parallel"), "--out", str(root / "neox")]) == 0
    assert import_main(["--from", str(HF / "neox_rot25_parallel"), "--out", str(root / "neox"), "--stage", "sft",
                        "--steps", "100,200"]) == 0
    for name, case in (("llama", "llama_gqa"), ("olmo2", "olmo2_gqa"), ("baichuan2", "baichuan2_7b")):
        assert import_main(["--from", str(HF / case), "--out", str(root / name)]) == 0
    for name in ("neox", "llama", "olmo2", "baichuan2"):
        (root / name / "tokenizer.json").write_text(json.dumps({"chars": CHARS}))
    rng = np.random.default_rng(0)
    with open(root / "tasks.jsonl", "w") as f:
        for i in range(24):
            k = 2 + i % 3
            f.write(json.dumps({"question": f"is {WORDS[i % 9]}?", "choices": list(rng.choice(WORDS, k, replace=False)),
                                "answer": int(rng.integers(k))}) + "\n")
    return {**{name: root / name for name in ("neox", "llama", "olmo2", "baichuan2")}, "tasks": root / "tasks.jsonl",
            "root": root}


def params_of(run, step, series="pretrain"):
    return ck.Series(run, series, create=False).restore_params(step), ck.load_model_config(run)


# ------------------------------------------------------------------------------ probes
def test_probes_match_numpy_svd_and_scikit_learn_with_uneven_options():
    rng = np.random.default_rng(1)
    I, D = 30, 5
    n_choices = 2 + rng.integers(0, 3, I)                         # 2-4 options per item
    answers = rng.integers(0, n_choices)
    signal = rng.normal(size=D)
    rows, rows_IK, valid = [], np.zeros((I, 4), int), np.zeros((I, 4), bool)
    for i in range(I):
        for k in range(n_choices[i]):
            rows_IK[i, k], valid[i, k] = len(rows), True
            rows.append(rng.normal(size=D) + 1.2 * signal * (k == answers[i]))
    H = np.array(rows, np.float32)
    fit, ev = np.arange(18), np.arange(18, 30)
    lay = mc_probes.layout(rows_IK, valid, answers, fit, ev)
    pca_right, log_right, converged = jax.jit(lambda H: mc_probes.probe_split(H, lay, 1.0, 30))(H)
    # PCA direction: first right singular vector of every (right - wrong) difference of the fit items
    diffs = np.array([H[rows_IK[i, answers[i]]] - H[rows_IK[i, k]] for i in fit for k in range(n_choices[i])
                      if k != answers[i]])
    v = np.linalg.svd(diffs, full_matrices=False)[2][0]
    v *= np.sign((diffs @ v).sum())
    choose = lambda scores: np.array([np.argmax(s[:n]) for s, n in zip(scores, n_choices[ev])]) == answers[ev]
    np.testing.assert_array_equal(pca_right, choose(H[rows_IK[ev]] @ v))
    # logistic probe: scikit-learn on the standardised fit rows ("is this option right")
    X = np.array([H[rows_IK[i, k]] for i in fit for k in range(n_choices[i])])
    y = np.array([k == answers[i] for i in fit for k in range(n_choices[i])])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit((X - mu) / sd, y)
    scores = clf.decision_function((H[rows_IK[ev]].reshape(-1, D) - mu) / sd).reshape(len(ev), 4)
    np.testing.assert_array_equal(log_right, choose(scores))
    assert bool(converged) and pca_right.mean() > 0.7 and log_right.mean() > 0.7


# ---------------------------------------------------------------------- forward measures
def _prompts(tok, texts):
    ids = [tok.encode(t) for t in texts]
    rows, lengths = pad_tokens(ids, 64)
    return ids, rows, lengths


@pytest.mark.parametrize("name,step", [("llama", 20), ("baichuan2", 440)])
def test_letters_and_greedy_answers_match_full_forwards(runs, name, step):
    params, config = params_of(runs[name], step)
    tok = CharTokenizer(CHARS)
    texts = ["Question: is red?\nA. sky\nB. sea\nAnswer:", "Question: ice?\nA. oak\nB. hen\nC. sun\nAnswer:",
             "Q: a?\nAnswer:"]
    ids, rows, lengths = _prompts(tok, texts)
    letter_ids = tok.encode("ABC")
    logp = mc_answers.letter_logprobs(params, rows, lengths, letter_ids, config, batch_size=2)
    greedy = mc_answers.decode_rows(params, rows, lengths, config, 3, jax.random.PRNGKey(0), 0.0, batch_size=2)
    forward = full_forward(params, config)
    for n, row in enumerate(ids):
        ref = forward(row)[0][-1]
        ref = ref - ref.max() - np.log(np.exp(ref - ref.max()).sum())            # numpy log-softmax
        np.testing.assert_allclose(logp[n], ref[letter_ids], rtol=1e-4, atol=1e-4)
        seq = list(row)
        for _ in range(3):                                                        # brute-force greedy loop
            seq.append(int(np.argmax(forward(seq)[0][-1])))
        np.testing.assert_array_equal(greedy[n], seq[len(row):])


def test_sampled_answers_follow_the_model_distribution(runs):
    params, config = params_of(runs["neox"], 100)
    tok = CharTokenizer(CHARS)
    _, rows, lengths = _prompts(tok, ["Question: is red?\nAnswer:"])
    n = 3000
    drawn = mc_answers.decode_rows(params, np.repeat(rows, n, 0), np.repeat(lengths, n), config, 1,
                                   jax.random.PRNGKey(3), 1.0, batch_size=500)[:, 0]
    logits = np.asarray(models.apply(params, rows[:, :lengths[0]], config)[0][0, -1], np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    freq = np.bincount(np.asarray(drawn), minlength=len(p)) / n
    assert np.abs(freq - p).max() < 4 * math.sqrt(0.25 / n)                      # 4 sigma of the worst case


def test_letter_continuations_and_parsing(tmp_path):
    from dynamics.tokenizers import train_bpe

    char = CharTokenizer(CHARS)
    prefix, letters = mc_answers.letter_continuations(char, 4, mt.LETTERS)
    assert char.decode(prefix) == " " and char.decode(letters) == "ABCD"
    text = "Question: which?\nA. one\nB. two\nAnswer: A B C D the letters\n" * 20
    bpe = train_bpe([text], 60)
    prefix, letters = mc_answers.letter_continuations(bpe, 4, mt.LETTERS)
    for k, letter in enumerate("ABCD"):
        full = bpe.encode(f"Answer: {letter}")
        assert list(full) == list(bpe.encode("Answer:")) + list(prefix) + [letters[k]]
    with pytest.raises(OntogenyError, match="one distinct token"):        # the fixture BPE has no capitals
        mc_answers.letter_continuations(load_tokenizer(HF / "neox_rot25_parallel" / "step0"), 4, mt.LETTERS)
    wide = CharTokenizer(CHARS + "()")
    options = ("ant", "bee", "cow", "cat")
    conts = [" B", "(C) x", "\n D.", " E", "xA", "", " A", " bee\n", " b", " c", " co", "Ant", " cattle"]
    new = np.array([list(wide.encode(c.ljust(7)[:7])) for c in conts])
    new[6, 0] = wide.vocab_size + 3                                       # an id of the padded vocabulary
    got = mc_answers.parse_answers(new, [options] * len(conts), wide, mt.LETTERS)
    # letters, none, by the option's text (unique), ambiguous text, a capital that is no letter answer
    np.testing.assert_array_equal(got, [1, 2, 3, -1, -1, -1, -1, 1, 1, -1, 2, -1, 3])


def test_fewshot_prompts_draw_train_shots_and_drop_the_earliest_to_fit():
    from experiments.studies.cognition import series_inputs as si

    items = [mt.MCItem(f"q{i}?", ("ab", "cd"), i % 2) for i in range(10)]
    task = si.Task(items, np.arange(6), np.arange(6, 10), {}, "")
    tok = CharTokenizer(CHARS + "0123456789")
    full, used = si.fewshot_prompts(task, tok, task.train, task.test, 3, seed=0, room=1000)
    assert list(used) == [3] * 4
    for ids, i in zip(full, task.test):
        blocks = tok.decode(ids).split("\n\n")
        assert blocks[-1] == mt.prompt_text(items[i]) and len(blocks) == 4
        assert all(any(b == mt.solved_text(items[j]) for j in task.train) for b in blocks[:3])
    one = len(tok.encode(mt.prompt_text(items[6])))
    cut, used = si.fewshot_prompts(task, tok, task.train, task.test, 3, seed=0, room=one + 2 * (one + 4))
    assert list(used) == [2] * 4 and all(tok.decode(c) in tok.decode(f) for c, f in zip(cut, full))


# ------------------------------------------------------------------------------- stages
def test_stage_discovery_and_its_errors(runs):
    neox, llama = str(runs["neox"]), str(runs["llama"])
    assert [(s.label, s.series, s.steps) for s in stage_list.parse(neox, "")] == \
        [("pretrain", "pretrain", (0, 100, 200)), ("sft", "sft", (100, 200))]
    assert [s.label for s in stage_list.parse(neox, "sft,pretrain")] == ["sft", "pretrain"]
    paired = stage_list.parse("", f"base:{llama},sft:{neox}")
    assert [(s.label, s.series) for s in paired] == [("base", "pretrain"), ("sft", "sft")]
    for run, spec, fragment in [(neox, "rl", "has no series 'rl'"), ("", f"rl:{neox}", "none named 'rl'"),
                                ("", f"a:{llama},a:{llama}", "twice"), ("", f"a:{runs['root']}/nope", "not a run"),
                                ("", ":x", "not LABEL:RUN")]:
        with pytest.raises(OntogenyError, match=fragment):
            stage_list.parse(run, spec)


# --------------------------------------------------------------------- config contract
def test_series_keys_change_the_resolved_run_or_are_refused(runs):
    from tests.test_config_contract import candidates, leaf_types, resolved

    base = override(cog.PRESETS["tiny"], [f"run={runs['neox']}", f"tasks={runs['tasks']}"])
    before = resolved(cog, base)
    for key, (name, value, kind) in leaf_types(base).items():
        options = {"stages": ["sft", "pretrain,sft"], "run": [str(runs["llama"])],
                   "tasks": [str(runs["root"] / "t2.jsonl")], "test_tasks": [str(runs["tasks"])], "max_items": [12]}.get(name)
        if name == "tasks":
            (runs["root"] / "t2.jsonl").write_text(runs["tasks"].read_text().split("\n", 1)[1])
        outcome = None
        for candidate in options or candidates(name, value, kind, runs["neox"]):
            text = ",".join(map(str, candidate)) if isinstance(candidate, tuple) else str(candidate).lower() \
                if isinstance(candidate, bool) else str(candidate)
            try:
                after = resolved(cog, override(base, [f"{key}={text}"]))
            except OntogenyError as e:
                if "drop this override" in str(e):
                    outcome = "refused"
                    break
                continue
            outcome = "changed" if after != before else f"{key}={text} changes nothing"
            break
        assert outcome in ("changed", "refused"), (key, outcome)


@pytest.mark.parametrize("sets,key", [
    (["tasks=x.jsonl"], "tasks"), (["max_new_tokens=3"], "max_new_tokens"),
    (["run={neox}", "model.n_layer=2"], "model.n_layer"), (["run={neox}", "answer_format=letter"], "answer_format"),
    (["stages=a:{neox}", "run={neox}"], "run"), (["run={neox}", "tasks={tasks}", "world.n_entities=9"], "world.n_entities"),
    (["run={neox}", "test_fraction=0.3"], "test_fraction"),
])
def test_keys_a_mode_makes_meaningless_are_refused(runs, sets, key):
    with pytest.raises(OntogenyError) as e:
        override(cog.PRESETS["tiny"], [s.format(**runs) for s in sets])
    assert f"--set {key}:" in str(e.value) and "drop this override" in str(e.value)


def test_cli_refuses_with_exit_2_naming_the_key(runs, tmp_path):
    from tests.conftest import run_cli

    done = run_cli("cognition", "--out", str(tmp_path / "o"), "--set", f"run={runs['neox']}", "--set", "model.n_layer=2")
    assert done.returncode == 2 and "model.n_layer" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------ end to end
def test_a_multi_stage_series_end_to_end_against_plain_loops(runs, tmp_path):
    config = override(cog.PRESETS["tiny"], [f"stages=base:{runs['olmo2']},sft:{runs['neox']}",
                                            f"tasks={runs['tasks']}", "fewshot=0,1", "pass_ks=1,2", "n_samples=2",
                                            "probe_iters=8", "max_new_tokens=2", "batch_size=8",
                                            "sample_temperature=0.00001"])
    folder = RunFolder(tmp_path / "out")
    summary = cog.run(config, folder)
    json.dumps(summary, allow_nan=False)                                     # finite or null throughout
    assert summary["mode"] == "series" and summary["n_checkpoints"] == 3 + 2
    assert "tasks.jsonl" in summary["text_source"] and summary["tasks"]["format"] == "plain"
    assert summary["n_test_items"] + summary["n_train_items"] + summary["n_items_dropped"] == 24
    assert summary["probes_converged"] == summary["probes_total"] == 5 * 3
    for s in ("base", "sft"):
        for key in ("cognitive", "expressive", "expressive_letter", "cognitive_logistic"):
            assert 0 <= summary[f"{key}_{s}"] <= 1 and len(summary[f"{key}_{s}_ci"]) == 2
        assert summary["pass_at_k"][s][1] <= summary["pass_at_k"][s][2]
        # near temperature 0 every sample is the greedy answer; a 1-shot prompt cannot fit a context of
        # 64 characters, so its shot is dropped and the prompt is the zero-shot one
        assert summary["pass_at_k"][s][2] == summary["pass_at_k"][s][1] == summary[f"expressive_{s}"]
        assert summary["fewshot_shots_used"][s][1] == 0 and summary[f"fewshot_{s}"][1] == summary[f"expressive_{s}"]
    assert "expressive_sft_minus_base_ci" in summary and len(cog.findings(summary)) == 3
    rows = folder.read_metrics()
    assert [(r["stage"], r["step"]) for r in rows] == [("base", 0), ("base", 1000), ("base", 2000), ("sft", 100),
                                                       ("sft", 200)]
    for name in ("capabilities", "probe_layers_pca", "probe_layers_logistic", "passk_fewshot",
                 "cognitive_vs_expressive"):
        assert folder.figure(name).exists()
    # the last checkpoint of each stage, recomputed with full forwards item by item
    items, _ = mt.read_tasks(runs["tasks"])
    train, test = mt.split(len(items), config.test_fraction, config.seed)
    tok = CharTokenizer(CHARS)
    for stage, run, step, row in (("base", runs["olmo2"], 2000, rows[2]), ("sft", runs["neox"], 200, rows[4])):
        params, model = params_of(run, step, "sft" if stage == "sft" else "pretrain")
        forward = full_forward(params, model)
        letter, greedy = [], []
        for i in test:
            ids = list(tok.encode(mt.prompt_text(items[i])))
            logits = forward(ids + list(tok.encode(" ")))[0][-1]
            letter.append(np.argmax(logits[tok.encode(mt.LETTERS[:len(items[i].choices)])]) == items[i].answer)
            seq = list(ids)
            for _ in range(2):
                seq.append(int(np.argmax(forward(seq)[0][-1])))
            new = seq[len(ids):]
            new = new[:next((j for j, t in enumerate(new) if t >= tok.vocab_size), len(new))]
            greedy.append(mc_answers.named_option(tok.decode(new), items[i].choices, mt.LETTERS) == items[i].answer)
        assert row["expressive_letter"] == pytest.approx(np.mean(letter))
        assert row["expressive"] == pytest.approx(np.mean(greedy))
        # the PCA probe at the layer the study chose, from models.apply's residual stream
        layer = row["cognitive_layer"]
        H = {(i, k): forward(list(tok.encode(mt.option_text(items[i], k))))[1][layer]
             for i in np.concatenate([train, test]) for k in range(len(items[i].choices))}
        diffs = np.array([H[i, items[i].answer] - H[i, k] for i in train for k in range(len(items[i].choices))
                          if k != items[i].answer])
        v = np.linalg.svd(diffs, full_matrices=False)[2][0]
        v *= np.sign((diffs @ v).sum())
        right = [np.argmax([H[i, k] @ v for k in range(len(items[i].choices))]) == items[i].answer for i in test]
        assert row["cognitive"] == pytest.approx(np.mean(right))


def full_forward(params, model):
    """ids -> (logits [S, V], states [L+1, D] at the last token): one full forward of the row
    alone, padded on the right to the context (one compile; causal attention keeps the padding
    out), through `models.apply` with its whole logits."""
    @jax.jit
    def apply(tokens):
        logits, acts = models.apply(params, tokens[None], model, capture=("embed", "resid"))
        return logits[0], jax.numpy.concatenate([acts["embed"][None, 0], acts["resid"][:, 0]], axis=0)

    def run(ids):
        logits, states = apply(np.array(list(ids) + [0] * (model.context - len(ids)), np.int32))
        return np.asarray(logits[:len(ids)], np.float64), np.asarray(states[:, len(ids) - 1], np.float64)
    return run
