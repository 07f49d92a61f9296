"""NeuroMFA network construction (against an independently built graph) and the study's pieces."""

import jax
import numpy as np
import pytest
import scipy.sparse.csgraph

from probes.neuromfa import network as neunet
from probes.neuromfa import spectrum as mf
from dynamics.stacks import stack_trees
from models import gpt

CFG = gpt.GPTConfig(vocab_size=11, context=8, n_layer=2, n_head=2, d_model=16)


def small_params(seed=0, scale=1.0):
    """The four block matrices of a GPT with CFG's shapes (layout of models/gpt.py), N(0, 0.02)."""
    rng = np.random.default_rng(seed)
    L, D, F = CFG.n_layer, CFG.d_model, CFG.d_mlp
    w = lambda *shape: (scale * rng.normal(0, 0.02, shape)).astype(np.float32)
    return {"blocks": {"attn": {"w_qkv": w(L, D, 3 * D), "w_out": w(L, D, D)},
                       "mlp": {"w_in": w(L, D, F), "w_out": w(L, F, D)}}}


def named_graph(params, idx):
    """Edges {(src, dst): weight} between named neurons, written from the layout description."""
    b = {k: {kk: np.asarray(v) for kk, v in d.items()} for k, d in params["blocks"].items() if k in ("attn", "mlp")}
    D = CFG.d_model
    edges = {}
    for l in range(CFG.n_layer):
        A, A_next = idx["resid"][l], idx["resid"][l + 1]
        for i in A:
            for t, kind in enumerate("qkv"):
                for j in idx["head"][l]:
                    edges[("A", l, i), ("Q", l, kind, j)] = b["attn"]["w_qkv"][l, i, t * D + j]
        for j in idx["head"][l]:
            for jj in idx["head"][l]:
                if j == jj:
                    edges[("Q", l, "q", j), ("C", l, jj)] = 1.0
                edges[("Q", l, "k", j), ("C", l, jj)] = 1.0
                edges[("Q", l, "v", j), ("C", l, jj)] = 1.0
            for m in idx["mid"][l]:
                edges[("C", l, j), ("M", l, m)] = b["attn"]["w_out"][l, j, m]
        for m in idx["mid"][l]:
            for h in idx["mlp"][l]:
                edges[("M", l, m), ("H", l, h)] = b["mlp"]["w_in"][l, m, h]
        for h in idx["mlp"][l]:
            for i in A_next:
                edges[("H", l, h), ("A", l + 1, i)] = b["mlp"]["w_out"][l, h, i]
    return edges


def layout_order(idx):
    """Node names in the documented order: per block A, Q (q.., k.., v..), C, M, H; then the last A."""
    order = []
    for l in range(CFG.n_layer):
        order += [("A", l, i) for i in idx["resid"][l]]
        order += [("Q", l, kind, j) for kind in "qkv" for j in idx["head"][l]]
        order += [("C", l, j) for j in idx["head"][l]] + [("M", l, m) for m in idx["mid"][l]]
        order += [("H", l, h) for h in idx["mlp"][l]]
    return order + [("A", CFG.n_layer, i) for i in idx["resid"][CFG.n_layer]]


@pytest.fixture(scope="module")
def sample():
    idx = neunet.sample_indices(3, CFG, n_samples=2, n_resid=4, n_mlp=6)
    return idx, {k: v[0] for k, v in idx.items()}


def test_sample_indices_static_and_distinct(sample):
    idx, _ = sample
    again = neunet.sample_indices(3, CFG, n_samples=2, n_resid=4, n_mlp=6)
    assert all(np.array_equal(idx[k], again[k]) for k in idx)
    assert idx["resid"].shape == (2, 3, 4) and idx["mlp"].shape == (2, 2, 6)
    for k, top in (("resid", 16), ("head", 16), ("mid", 16), ("mlp", 64)):
        assert idx[k].min() >= 0 and idx[k].max() < top
        assert all(len(set(g)) == len(g) for g in idx[k].reshape(-1, idx[k].shape[-1]))
    assert not np.array_equal(idx["head"][0], idx["head"][1])
    from models.errors import OntogenyError
    with pytest.raises(OntogenyError):
        neunet.sample_indices(0, CFG, n_resid=17)


def test_networks_match_independently_built_graph(sample):
    _, one = sample
    params = small_params()
    edges = named_graph(params, one)
    order = layout_order(one)
    pos = {n: i for i, n in enumerate(order)}
    assert {n for e in edges for n in e} <= set(pos) and len(pos) == len(order)
    W = np.zeros((len(order), len(order)))
    for (s, t), w in edges.items():
        W[pos[s], pos[t]] = w
    np.testing.assert_allclose(np.asarray(jax.jit(neunet.adjacency)(params, one)), W, rtol=1e-6)
    ref = np.where(W != 0, 1 / np.where(W != 0, np.abs(W), 1), np.inf)
    # Direct rows: every source node's out-distances (order of rows/columns is irrelevant to the
    # analysis), so compare each row's sorted finite distances, rows sorted the same way.
    ours = np.asarray(jax.jit(neunet.direct_distances)(params, one), np.float64)
    assert ours.shape == (2 * (6 * 4 + 6), 12)
    key = lambda r: (len(r), tuple(r))
    rows = lambda d: sorted((np.sort(r[np.isfinite(r)]) for r in d if np.isfinite(r).any()), key=key)
    for a, b in zip(rows(ours), rows(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    paths = scipy.sparse.csgraph.shortest_path(np.where(np.isinf(ref), 0, ref), directed=True)
    np.fill_diagonal(paths, np.inf)
    np.testing.assert_allclose(np.asarray(jax.jit(neunet.shortest_path_distances)(params, one)), paths, rtol=1e-5)
    assert np.isfinite(paths).sum() > len(edges)  # multi-hop paths exist


def test_series_equals_loop_and_scaling_lowers_alpha0(sample):
    idx, _ = sample
    cfg = mf.MFAConfig(min_degree=3)
    trees = [small_params(0), small_params(1), small_params(0, scale=3.0)]
    series = mf.series_spectra(stack_trees(trees), idx, cfg, chunk_size=2)
    for t, p in enumerate(trees):
        one = jax.jit(mf.checkpoint_spectra, static_argnames="cfg")(mf.network_weights(p), idx, cfg)
        for key in ("tau", "alpha0", "width", "n_used", "mean_abs_w", "strength"):
            np.testing.assert_allclose(series[key][t], np.asarray(one[key]), rtol=1e-5, atol=1e-6)
    assert series["alpha0"].shape == (3, 2) and series["tau"].shape == (3, 2, 61)
    # Larger weights = shorter distances: mass sits at smaller radii, so alpha0 falls.
    assert (series["alpha0"][2] < series["alpha0"][0] - 0.1).all()
    np.testing.assert_allclose(series["mean_abs_w"][2], 3 * series["mean_abs_w"][0], rtol=1e-5)
    summary = mf.summarize(series)
    assert summary["emergence"][0] == 0.0 and summary["emergence"].shape == (3,)


def test_gaussian_control_keeps_per_matrix_std():
    params = small_params(0)
    scales = np.array([[1.0, 5.0], [2.0, 0.5]])[:, :, None, None]  # [T=2, L=2]: one std per matrix
    stacked = jax.tree.map(lambda x: np.stack([x, 2 * x]), params)
    stacked["blocks"]["mlp"]["w_in"] = stacked["blocks"]["mlp"]["w_in"] * scales
    noise = mf.gaussian_like(stacked, np.random.default_rng(1))
    w, z = stacked["blocks"]["mlp"]["w_in"], noise["blocks"]["mlp"]["w_in"]
    assert z.shape == w.shape and z.dtype == np.float32 and not np.allclose(z, w)
    np.testing.assert_allclose(z.std(axis=(2, 3)), w.std(axis=(2, 3)), rtol=0.05)
    np.testing.assert_allclose(z.mean(axis=(2, 3)), 0, atol=0.05 * w.std())
    assert not np.allclose(z[0] / z[0].std(), z[1] / z[1].std())  # fresh noise per checkpoint
    assert set(noise["blocks"]) == {"attn", "mlp"}


# ----------------------------------------------------------------------------- the study's pieces
def test_word_targets_by_hand():
    from probes.neuromfa.measures import word_targets
    chars = " ',.abc"
    is_letter = np.array([c.isalpha() or c == "'" for c in chars])
    enc = lambda s: np.array([chars.index(c) for c in s])
    seq = enc("ab ca,b'c b.a")       # 13 chars: windows x = seq[:-1], y = seq[1:]
    x, y = seq[None, :-1], seq[None, 1:]
    letters, ends = word_targets(x, y, is_letter)
    # Whole words preceded and followed by a non-letter inside the window: "ca" (positions 3-4,
    # ended by ","), "b'c" (6-8, ended by " "), "b" (10, ended by "."). "ab" has no left boundary,
    # "a" at the end has no right one. Target t predicts position t + 1.
    assert [list(r[r >= 0]) for r in letters] == [[2, 3], [5, 6, 7], [9]]
    assert list(ends) == [4, 8, 10]


def test_evaluate_series_matches_direct_computation(tmp_path):
    from dynamics.data import CharTokenizer
    from probes.neuromfa.measures import evaluate_series, word_targets
    tok = CharTokenizer("abc de.fgh")
    cfg = gpt.GPTConfig(vocab_size=tok.vocab_size, context=12, n_layer=1, n_head=2, d_model=8)
    shapes = jax.eval_shape(lambda: gpt.init_params(cfg, jax.random.PRNGKey(0)))
    rngs = [np.random.default_rng(s) for s in (0, 1)]
    trees = [jax.tree.map(lambda a, r=r: r.normal(0, 0.3, a.shape).astype(np.float32), shapes) for r in rngs]
    text = "abc de. fgh bad cab. " * 20
    out = evaluate_series(stack_trees(trees), cfg, tok, text, n_windows=5, context=12, seed=3)
    from dynamics.data import eval_batches
    x, y = eval_batches(tok.encode(text), 1, 5, 12, seed=3)[0]
    is_letter = np.array([c.isalpha() for c in tok.chars])
    letters, ends = word_targets(x, y, is_letter)
    for t, p in enumerate(trees):
        logits = np.asarray(jax.jit(lambda p, x: gpt.apply(p, x, cfg)[0])(p, x))
        pred = logits.argmax(-1)
        np.testing.assert_allclose(out["val_loss"][t], float(gpt.cross_entropy(logits, y)), rtol=1e-5)
        np.testing.assert_allclose(out["char_acc"][t], (pred == y).mean(), rtol=1e-6)
        flat_ok, flat_pred = (pred == y).reshape(-1), pred.reshape(-1)
        words = [all(flat_ok[i] for i in r[r >= 0]) and not is_letter[flat_pred[e]] for r, e in zip(letters, ends)]
        np.testing.assert_allclose(out["word_acc"][t], np.mean(words), rtol=1e-6)


def test_config_validation():
    from models.errors import OntogenyError
    from experiments.studies.neuromfa.study import PRESETS, Config
    assert len(PRESETS["tiny"].widths) >= 3 and len(PRESETS["full"].widths) >= 3
    for bad in ({"widths": (32, 64)}, {"widths": (64, 32, 128)}, {"widths": (30, 64, 128)},
                {"n_resid": 64, "widths": (32, 64, 128)}):
        with pytest.raises(OntogenyError):
            Config(**bad)
    Config(widths=(32, 64), pretrain_run="/some/run")  # a pretrain run counts as the third size


def test_study_analysis_on_saved_series(tmp_path):
    """analyse_model -> summary -> figures on a saved series whose only change is weight scale."""
    from dynamics.checkpoints import Series
    from dynamics.data import CharTokenizer, synthetic_text
    from dynamics.runlog import RunFolder, write_json
    from experiments.studies.neuromfa import study as nm
    from experiments.studies.neuromfa import figures as neuromfa_figures
    from probes.neuromfa import measures
    text = synthetic_text(3000, seed=0)
    tok = CharTokenizer(text)
    config = nm.Config(widths=(8, 16, 24), n_head=2, context=16, n_resid=8, n_mlp=16, n_samples=3,
                       mfa=mf.MFAConfig(min_degree=5), eval_windows=8)
    cfg = gpt.GPTConfig(vocab_size=tok.vocab_size, context=16, n_layer=2, n_head=2, d_model=8)
    tok.save(tmp_path / "tokenizer.json")
    write_json(tmp_path / "model.json", cfg)
    shapes = jax.eval_shape(lambda: gpt.init_params(cfg, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    base = jax.tree.map(lambda a: rng.normal(0, 0.02, a.shape).astype(np.float32), shapes)
    series = Series(tmp_path, "pretrain")
    for step, scale in ((0, 1.0), (1, 2.0), (4, 3.0)):
        series.save(step, jax.tree.map(lambda x: x * scale, base))
    r = nm.analyse_model(tmp_path, config, text)
    s, c = r["summary"], r["control"]
    assert list(r["steps"]) == [0, 1, 4] and s["emergence"][0] == 0.0 and c["emergence"][0] == 0.0
    assert (np.diff(s["alpha0"]) < 0).all()  # scale growth alone lowers alpha0 ...
    # ... and Gaussian weights of the same std reproduce it: a scale-only change has E ~ control E.
    np.testing.assert_allclose(s["emergence"], c["emergence"], atol=0.15)
    np.testing.assert_allclose(s["mean_abs_w"], s["mean_abs_w"][0] * np.array([1, 2, 3]), rtol=1e-4)
    assert set(r["eval"]) == {"val_loss", "char_acc", "word_acc"} and r["eval"]["val_loss"].shape == (3,)
    assert r["n_params"] == sum(x.size for x in jax.tree.leaves(base)) - base["wpe"].size - base["wte"].size
    # Three "sizes" (the same series under three parameter counts) exercise the summary and figures.
    results = {f"m{i}": {**r, "n_params": r["n_params"] * (i + 1)} for i in range(3)}
    results["m2"] = {**results["m2"], "summary": {**s, "emergence": s["emergence"] + 1.0}}
    order = ["m0", "m1", "m2"]
    summary = measures.summary_numbers(results, order)
    assert summary["emergence_last_by_size"] == [float(s["emergence"][-1])] * 2 + [float(s["emergence"][-1] + 1)]
    assert summary["emergence_last"] == summary["emergence_last_by_size"][-1]
    assert summary["spearman_emergence_last_vs_log_size"] > 0.8
    folder = RunFolder(tmp_path / "study")
    neuromfa_figures.plot_all(results, order, folder)
    assert {p.name for p in folder.figures.iterdir()} >= {"spectra.png", "alpha0_width.png", "emergence.png",
                                                          "emergence_vs_size.png", "correlations.png"}


def test_correlation_figure_leaves_an_undefined_correlation_blank(tmp_path):
    """A constant series (no word predicted right at any step) makes its Spearman undefined (None in
    the summary); the figure draws the defined bars and leaves that one blank instead of failing."""
    from experiments.studies.neuromfa import figures as neuromfa_figures
    from probes.neuromfa import measures

    C = 4
    res = {"summary": {k: np.linspace(1, 2, C) for k in ("emergence", "alpha0", "width", "mean_abs_w", "strength")},
           "control": {"emergence": np.linspace(0, 1, C)},
           "eval": {"val_loss": np.linspace(3, 2, C), "char_acc": np.linspace(0, 0.2, C), "word_acc": np.zeros(C)}}
    corr = measures.correlations(measures.rows([res]))
    assert corr["emergence"]["vs_word_acc"] is None and corr["emergence"]["vs_val_loss"] == pytest.approx(-1.0)
    neuromfa_figures.plot_correlations({"m": res}, ["m"], ["C0"], tmp_path / "correlations.png")
    assert (tmp_path / "correlations.png").stat().st_size > 0
