import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from dynamics import knowledge as kw
from dynamics import posttrain
from dynamics import train as train_lib
from dynamics.runlog import RunFolder
from experiments.studies.cognition import study as cog
from models import gpt
from probes import cognition as cm


@pytest.fixture(scope="module")
def world():
    return kw.make_world(kw.WorldConfig(n_entities=8, n_attributes=2, n_values=5, n_options=4, seed=1))


def test_option_sentences_mask_marks_value_and_stop(world):
    tok = kw.tokenizer(world)
    qs = np.arange(len(world.questions))
    options, _ = kw.fixed_items(world, qs)
    tokens, mask = cm.option_sentences(world, tok, qs, options)
    assert tokens.shape[0] == len(qs) * 4
    for n in range(0, len(tokens), 5):
        q, k = divmod(n, 4)
        e, a = world.questions[q]
        targets = tok.decode(tokens[n, 1:][mask[n] > 0])
        assert targets == kw.value_name(a, int(options[q, k])) + "."
        assert tok.decode(tokens[n]).lstrip("\n") == kw.fact_sentence(world, e, a, int(options[q, k]))


def test_probe_grid_matches_numpy_and_sklearn():
    rng = np.random.default_rng(0)
    T, L, N, K, D = 2, 2, 40, 4, 6
    answers = rng.integers(0, K, N)
    signal = rng.normal(size=D)
    H = rng.normal(size=(T, L, N, K, D)).astype(np.float32)
    H += (np.arange(K)[None, None, None, :, None] == answers[None, None, :, None, None]) * signal * np.array(
        [0.0, 1.5])[None, :, None, None, None]  # layer 1 carries the answer, layer 0 does not
    train, test = np.arange(0, 24), np.arange(24, 40)
    out = cm.probe_grid(H, answers, train, test, C=1.0, n_iter=30)
    for t in range(T):
        for l in range(L):
            Htr, Hte = H[t, l, train], H[t, l, test]
            # PCA direction: first right singular vector of the (correct - incorrect) differences
            corr = Htr[np.arange(len(train)), answers[train]]
            diffs = np.stack([corr[i] - Htr[i, k] for i in range(len(train)) for k in range(K)
                              if k != answers[train][i]])
            v = np.linalg.svd(diffs, full_matrices=False)[2][0]
            v *= np.sign((diffs @ v).sum())
            acc = np.mean((Hte @ v).argmax(-1) == answers[test])
            assert out["pca_test"][t, l] == pytest.approx(acc, abs=1e-6)
            # logistic probe on standardised per-option states against scikit-learn
            Xtr, Xte = Htr.reshape(-1, D), Hte.reshape(-1, D)
            mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
            ytr = (np.arange(K)[None] == answers[train][:, None]).reshape(-1)
            clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit((Xtr - mu) / sd, ytr)
            ref = (clf.decision_function((Xte - mu) / sd).reshape(-1, K).argmax(-1) == answers[test]).mean()
            assert out["logistic_test"][t, l] == pytest.approx(ref, abs=1e-6)
    assert out["pca_test"][:, 1].min() > 0.8 and out["pca_test"][:, 0].max() < 0.6


def test_sample_correct_matches_probabilities():
    # correct token has probability p per item; c / n concentrates on p
    p = np.array([0.1, 0.5, 0.9])
    V = 5
    probs = np.stack([np.r_[pi, np.full(V - 1, (1 - pi) / (V - 1))] for pi in p])
    c = np.stack([cm.sample_correct(np.log(probs), np.zeros(3, int), 4000, 1.0, seed=s) for s in range(2)])
    assert np.all(np.abs(c / 4000 - p) < 0.03)
    # temperature -> 0 is greedy
    c0 = cm.sample_correct(np.log(probs), np.zeros(3, int), 50, 1e-3, seed=0)
    assert c0[0] == 0 and c0[2] == 50


def test_fewshot_prompts_use_train_items_only(world):
    tok = kw.tokenizer(world)
    opts, _ = kw.fixed_items(world, world.test)
    ids = cm.fewshot_prompts(world, tok, world.test, opts, 2, seed=0)
    assert ids.shape == (len(world.test), kw.prompt_length(world, 2))
    for row, q in zip(ids, world.test):
        text = tok.decode(row).lstrip("\n")
        blocks = text.split("\n\n")
        assert len(blocks) == 3 and text.endswith(kw.format_prompt(world, int(q), opts[list(world.test).index(q)]))
        test_prompts = {kw.format_prompt(world, int(t), o).split("\n")[0] for t, o in zip(world.test, opts)}
        assert not any(b.split("\n")[0] in test_prompts for b in blocks[:2])


@pytest.mark.parametrize("fmt", kw.FORMATS)
def test_sft_batch_masks_only_the_answer(world, fmt):
    tok = kw.tokenizer(world)
    P0 = kw.prompt_length(world, 0)
    q = int(world.train[0])
    o, k = kw.draw_item(world, q, np.random.default_rng(0))
    prompt = kw.left_pad([kw.format_prompt(world, q, o)], tok, P0)[0]
    answer = kw.answer_text(world, q, o, k, fmt)
    tokens, mask = posttrain.pack([prompt], [tok.encode(answer + "\n")], P0 + 8)
    batch = posttrain.as_batch(tokens, mask)
    assert tok.decode(batch["targets"][0][batch["mask"][0] > 0]) == answer + "\n"
    assert answer[0] == kw.option_heads(world, q, o, fmt)[k]


MICRO = cog.Config(
    world=kw.WorldConfig(n_entities=6, n_attributes=1, n_values=4, n_options=4),
    model=gpt.GPTConfig(context=128, n_layer=1, n_head=2, d_model=16),
    pretrain=train_lib.TrainConfig(steps=4, batch_size=2, warmup=1, log_every=2, log_checkpoints_until=2,
                                   checkpoint_every=0),
    sft=train_lib.TrainConfig(steps=2, batch_size=4, warmup=0, log_every=1, log_checkpoints_until=1,
                              checkpoint_every=0),
    rl=train_lib.TrainConfig(steps=2, batch_size=1, warmup=0, log_every=1, log_checkpoints_until=1,
                             checkpoint_every=0),
    grpo=posttrain.GRPOConfig(group_size=2, prompts_per_step=2, max_new_tokens=1),
    pretrain_chars=2000, fewshot=(0, 1), pass_ks=(1, 2, 4), n_samples=4, probe_iters=3)


def test_micro_study_end_to_end(tmp_path):
    folder = RunFolder(tmp_path / "run")
    summary = cog.run(MICRO, folder)
    for key in ("chance", "cognitive_pretrain", "expressive_pretrain", "cognitive_sft", "expressive_sft",
                "cognitive_rl", "expressive_rl", "pearson_r", "pearson_p", "spearman_rho", "fewshot_best_gain",
                "pass_at_4_pretrain"):
        assert key in summary
    assert summary["chance"] == 0.25
    # 3 pretrain (0, 1, 2, 4 -> 0,1,2,4) + sft (0,1,2) + rl (0,1,2) checkpoints
    assert summary["n_checkpoints"] == 4 + 3 + 3
    for s in cog.STAGES:
        assert 0 <= summary[f"expressive_{s}"] <= 1 and 0 <= summary[f"cognitive_{s}"] <= 1
        p = summary["pass_at_k"][s]
        assert p[1] <= p[2] <= p[4]
    for name in ("capabilities", "probe_layers", "passk_fewshot", "cognitive_vs_expressive"):
        assert folder.figure(name).exists()
    rows = [r for r in folder.read_metrics() if "cognitive" in r]
    assert len(rows) == summary["n_checkpoints"]
    # SFT starts from the last pretrain checkpoint and RL from the last SFT one
    from dynamics.checkpoints import load_stages
    labels, stack = load_stages(folder.root, cog.STAGES)
    for a, b in ((("pretrain", 4), ("sft", 0)), (("sft", 2), ("rl", 0))):
        i, j = labels.index(a), labels.index(b)
        for leaf in jax.tree.leaves(stack):
            np.testing.assert_array_equal(leaf[i], leaf[j])
    # the same run folder, trained here, measured as a checkpoint series on the world's items
    series_config = dataclasses.replace(MICRO, run=str(folder.root), fewshot=(0, 1), max_new_tokens=2)
    out = RunFolder(tmp_path / "series")
    s = cog.run(series_config, out)
    json.dumps(s, allow_nan=False)
    assert s["mode"] == "series" and [st["label"] for st in s["stages"]] == list(cog.STAGES)
    assert s["n_checkpoints"] == summary["n_checkpoints"] and s["n_test_items"] == summary["n_test_questions"]
    assert "knowledge world" in s["text_source"] and s["chance"] == summary["chance"]
    assert len(cog.findings(s)) == 3 and out.figure("capabilities").exists()
