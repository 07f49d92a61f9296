import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.errors import OntogenyError
from probes.crosscoders import model as cc
from probes.crosscoders import training as cct
from probes.crosscoders import emergence as em
from probes.crosscoders import metrics


def test_metrics_match_numpy_loops():
    rng = np.random.default_rng(0)
    N, S, D, F = 50, 3, 4, 7
    x = rng.normal(size=(N, S, D))
    x_hat = x + 0.3 * rng.normal(size=(N, S, D))
    ev = metrics.explained_variance(x, x_hat)
    for s in range(S):
        mean = sum(x[n, s] for n in range(N)) / N
        err = sum(float(np.dot(x[n, s] - x_hat[n, s], x[n, s] - x_hat[n, s])) for n in range(N))
        tot = sum(float(np.dot(x[n, s] - mean, x[n, s] - mean)) for n in range(N))
        assert ev[s] == pytest.approx(1 - err / tot, rel=1e-10)
    f = np.maximum(rng.normal(size=(N, F, S)) - 1.0, 0)
    f[:, 2, :] = 0  # a dead feature
    f[:, 4, 1] = 0  # dead only in snapshot 1
    l0, dead = metrics.l0(f, S), metrics.dead_fraction(f, S)
    for s in range(S):
        assert l0[s] == pytest.approx(np.mean([sum(f[n, i, s] > 0 for i in range(F)) for n in range(N)]))
        assert dead[s] == pytest.approx(sum(all(f[n, i, s] == 0 for n in range(N)) for i in range(F)) / F)
    assert dead[1] > dead[0]
    shared = np.maximum(rng.normal(size=(N, F)), 0)
    assert np.allclose(metrics.l0(shared, S), (shared > 0).sum(1).mean())
    assert metrics.loss_recovered(2.0, 2.5, 4.0) == pytest.approx(0.75)


def test_batch_topk_keeps_exactly_k_times_batch():
    rng = np.random.default_rng(1)
    score = jnp.asarray(rng.random((16, 40)))
    for k in (1, 3, 7):
        mask = np.asarray(cc.batch_topk_mask(score, jnp.asarray(k)))
        assert mask.sum() == k * 16
        kept = np.sort(np.asarray(score).ravel())[::-1][: k * 16]
        assert np.allclose(np.sort(np.asarray(score)[mask])[::-1], kept)
    config = cc.CrosscoderConfig(n_snapshots=2, d_model=6, n_features=20, arch="batchtopk")
    x = jnp.asarray(rng.normal(size=(16, 2, 6)), jnp.float32)
    params = cc.init_params(config, jax.random.PRNGKey(0), x, cc.one_hp({"k": 3}))
    f = cc.encode(params, x, config, cc.one_hp({"k": 3}))
    assert int((f > 0).sum()) == 3 * 16


def test_largest_mask_per_row_matches_argsort():
    rng = np.random.default_rng(5)
    score = rng.random((9, 30)).astype(np.float32)
    score[0, :25] = 0.0                      # only 5 positive entries: zeros are never kept
    mask = np.asarray(cc.largest_mask(jnp.asarray(score), 7, axis=1))
    for n in range(9):
        want = set(np.argsort(-score[n])[:7]) if n else set(np.flatnonzero(score[0] > 0))
        assert set(np.flatnonzero(mask[n])) == want


def test_resampling_reinitialises_only_dead_features_on_inputs():
    rng = np.random.default_rng(6)
    config = cc.CrosscoderConfig(n_snapshots=2, d_model=5, n_features=6, arch="batchtopk", dead_tokens=10,
                                 resample_every=1, steps=4)
    x = jnp.asarray(rng.normal(size=(12, 2, 5)), jnp.float32)
    hp = cc.one_hp({"k": 2})
    state = cc.init_state(config, jax.random.PRNGKey(0), x, hp)
    state, _ = cc.make_train_step(config)(state, x, hp)
    dead = np.array([True, False, True, False, False, False])
    state = {**state, "since_fired": jnp.where(jnp.asarray(dead), 100, 0)}
    before = jax.tree.map(np.asarray, state)
    new, n = cct.resample_dead(state, x, jax.random.PRNGKey(1), hp, config)
    assert int(n) == 2 and np.all(np.asarray(new["since_fired"]) == 0)
    W_dec, W_enc = np.asarray(new["params"]["W_dec"]), np.asarray(new["params"]["W_enc"])
    np.testing.assert_array_equal(W_dec[~dead], before["params"]["W_dec"][~dead])
    alive_norm = np.linalg.norm(before["params"]["W_dec"][~dead].reshape(4, -1), axis=1).mean()
    centred = (np.asarray(x) - before["params"]["b_dec"]).reshape(12, -1)
    for i in np.flatnonzero(dead):
        v = W_dec[i].reshape(-1)
        assert np.linalg.norm(v) == pytest.approx(alive_norm, rel=1e-5)
        cos = centred @ v / np.linalg.norm(centred, axis=1) / np.linalg.norm(v)
        assert cos.max() == pytest.approx(1.0, abs=1e-5)          # the direction of one batch input
        assert np.allclose(W_enc[..., i].reshape(-1) / np.linalg.norm(W_enc[..., i]), v / np.linalg.norm(v), atol=1e-5)
    adam = new["opt_state"][0]
    assert np.all(np.asarray(adam.mu["W_dec"])[dead] == 0) and np.any(np.asarray(adam.mu["W_dec"])[~dead] != 0)
    assert cct.resample_steps(cc.CrosscoderConfig(steps=1000, resample_every=200, decay=0.2)) == [200, 400, 600]


def test_jumprelu_threshold_gradient_is_kernel_estimate():
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.normal(size=2000))
    theta, eps = 0.3, 0.2
    grad = jax.grad(lambda t: cc.step_ste(z, t, jnp.asarray(eps)).mean())(jnp.asarray(theta))
    by_hand = -np.mean(np.abs((np.asarray(z) - theta) / eps) <= 0.5) / eps
    assert float(grad) == pytest.approx(by_hand, rel=1e-5)
    # equals the finite-difference derivative of the kernel-smoothed step
    smooth = lambda t: np.mean(np.clip((np.asarray(z) - t) / eps + 0.5, 0, 1))
    fd = (smooth(theta + 1e-4) - smooth(theta - 1e-4)) / 2e-4
    assert float(grad) == pytest.approx(fd, rel=1e-3)
    # and approximates the density of z at theta (d/dtheta P(z > theta) = -pdf(theta))
    assert float(grad) == pytest.approx(-np.exp(-theta ** 2 / 2) / np.sqrt(2 * np.pi), abs=0.06)
    # through the full JumpReLU, the threshold gradient is -h * K / eps * exp(tau) per feature
    config = cc.CrosscoderConfig(n_snapshots=2, d_model=5, n_features=6, arch="jumprelu", jump_eps=0.5)
    x = jnp.asarray(rng.normal(size=(30, 2, 5)), jnp.float32)
    params = cc.params_with_norm(config, jax.random.PRNGKey(1), x, 0.7)
    g = jax.grad(lambda p: cc.encode(p, x, config).sum())(params)["log_threshold"]
    h = np.asarray(cc.preacts(params, x))
    z_ = h[:, :, None] * np.asarray(cc.decoder_norms(params))[None]
    th = np.exp(np.asarray(params["log_threshold"]))
    expect = -(h[:, :, None] * (np.abs((z_ - th[None, :, None]) / 0.5) <= 0.5) / 0.5).sum((0, 2)) * th
    assert np.allclose(np.asarray(g), expect, rtol=1e-4, atol=1e-5)


def test_init_norm_choice_beats_other_norms():
    rng = np.random.default_rng(3)
    S, D, F = 3, 8, 64
    config = cc.CrosscoderConfig(n_snapshots=S, d_model=D, n_features=F, arch="relu")
    x = jnp.asarray(rng.normal(size=(256, S, D)) + 0.5, jnp.float32)
    key, hp = jax.random.PRNGKey(0), cc.one_hp({"l1": 0.0})
    params = cc.init_params(config, key, x, hp)
    chosen = float(np.linalg.norm(np.asarray(params["W_dec"]), axis=-1).mean())
    err = lambda n: float(cc.reconstruction_error(cc.params_with_norm(config, key, x, n), x, config, hp))
    # for ReLU the reconstruction is c * M x with c = norm^2: the error is a parabola in c with an
    # analytic minimum; the chosen norm must sit next to it and beat norms off the grid
    base = cc.params_with_norm(config, key, x, 1.0)
    xc = np.asarray(x - base["b_dec"])
    mx = np.asarray(cc.decode(base, cc.encode(base, x, config)) - base["b_dec"])
    c_star = np.sum(xc * mx) / np.sum(mx * mx)
    assert chosen == pytest.approx(np.sqrt(c_star), rel=0.15)
    for other in (0.5 * chosen, 0.8 * chosen, 1.3 * chosen, 3.0 * chosen, 0.01):
        assert err(chosen) <= err(other)


def _planted(rng, N, S, D, F_true, per_token=3):
    dirs = rng.normal(size=(F_true, S, D))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    scales = rng.uniform(0.3, 1.0, size=(F_true, S))
    scales[: F_true // 4, 0] = 0.0  # late features: absent at the first snapshot
    idx = np.argsort(rng.random((N, F_true)), axis=1)[:, :per_token]
    a = np.zeros((N, F_true))
    np.put_along_axis(a, idx, rng.exponential(1.0, size=idx.shape) + 0.5, axis=1)
    x = np.einsum("nf,fs,fsd->nsd", a, scales, dirs)
    return x.astype(np.float32), dirs * scales[..., None]


def test_recovers_planted_features():
    rng = np.random.default_rng(4)
    S, D, F_true = 3, 24, 16
    x, true = _planted(rng, 20000, S, D, F_true)
    config = cc.CrosscoderConfig(n_snapshots=S, d_model=D, n_features=48, arch="batchtopk", steps=600,
                                 batch_size=256, lr=3e-3, dead_tokens=20000)
    state, history = cct.train(config, [{"k": 3}], [0], lambda i: x[np.random.default_rng(i).integers(0, len(x), 256)])
    params = cct.member(state["params"], 0)
    learned = np.asarray(params["W_dec"]).reshape(48, -1)
    target = true.reshape(F_true, -1)
    cos = (target / np.linalg.norm(target, axis=1, keepdims=True)) @ (
        learned / np.linalg.norm(learned, axis=1, keepdims=True)).T
    best = cos.max(1)
    assert np.median(best) > 0.9 and np.mean(best > 0.8) >= 0.8
    # the per-snapshot decoder norms of the matched feature show the planted absence at snapshot 0
    norms = np.asarray(cc.decoder_norms(params))[cos.argmax(1)]
    late = norms[: F_true // 4, 0] / norms[: F_true // 4].max(1)
    assert np.median(late) < 0.2
    assert history[-1]["explained_variance"][0] > 0.8


def test_vmapped_training_equals_sequential():
    """K crosscoders in one vmapped program == each trained alone with the unvmapped step."""
    rng = np.random.default_rng(5)
    data = rng.normal(size=(2000, 2, 8)).astype(np.float32)
    next_batch = lambda i: data[np.random.default_rng(i).integers(0, 2000, 64)]
    for arch, hps, seeds in (("batchtopk", [{"k": 2}, {"k": 4}], [0, 1]),
                             ("jumprelu", [{"l1": 0.1}, {"l1": 1.0}], [0, 0])):
        config = cc.CrosscoderConfig(n_snapshots=2, d_model=8, n_features=16, arch=arch, steps=12, batch_size=64,
                                     lr=1e-2, aux_k=4 if arch == "batchtopk" else 0, dead_tokens=64,
                                     init_norms=(0.1, 0.3, 1.0))
        joint, _ = cct.train(config, hps, seeds, next_batch)
        init, step = cc.make_init(config), cc.make_train_step(config)
        for m, (hp, seed) in enumerate(zip(hps, seeds)):
            hp = cc.one_hp(hp)
            state = init(jax.random.PRNGKey(seed), jnp.asarray(next_batch(0)), hp)
            for i in range(config.steps):
                state, _ = step(state, jnp.asarray(next_batch(i)), hp)
            for a, b in zip(jax.tree.leaves(cct.member(joint, m)), jax.tree.leaves(state)):
                assert np.allclose(a, b, rtol=1e-4, atol=1e-5), arch
        assert not np.allclose(joint["params"]["W_dec"][0], joint["params"]["W_dec"][1])


def test_shuffle_buffer_normalises_and_refreshes():
    rng = np.random.default_rng(6)
    scales = np.array([1.0, 5.0, 0.2], np.float32)
    calls = []

    def source(i):
        calls.append(i)
        return (rng.normal(size=(100, 3, 16)) * scales[None, :, None]).astype(np.float32)

    buf = cct.ShuffleBuffer(source, size=400, batch_size=200, refresh_rows=100, refresh_every=2, seed=0)
    assert len(calls) == 4
    batch = buf(0)
    norms = np.linalg.norm(batch, axis=-1).mean(0)
    assert np.allclose(norms, 4.0, rtol=0.1)
    buf(1), buf(2)
    assert len(calls) == 5


def test_stopped_and_resumed_training_equals_uninterrupted(tmp_path):
    """SIGTERM after step 7 saves the state with its metrics as the orbax resume point; the next
    call resumes on a fresh ShuffleBuffer (which replays its draws): the final state and the
    metrics equal one uninterrupted run's. A damaged resume point is one clear error."""
    import os
    import signal

    from dynamics.loop import Checkpoints, Interrupted

    def make_buffer():
        source = lambda i: np.random.default_rng(100 + i).normal(size=(64, 2, 8)).astype(np.float32)
        return cct.ShuffleBuffer(source, size=256, batch_size=32, refresh_rows=64, refresh_every=3, seed=1)

    config = cc.CrosscoderConfig(n_snapshots=2, d_model=8, n_features=16, arch="batchtopk", steps=20, batch_size=32,
                                 lr=1e-2, aux_k=4, dead_tokens=64, init_norms=(0.1, 1.0), resample_every=10,
                                 resample_enc_scale=0.2)
    hps, seeds = [{"k": 2}, {"k": 4}], [0, 1]
    full, full_history = cct.train(config, hps, seeds, make_buffer(), callback=lambda i, m: None)
    sigterm_at_6 = lambda i, m: os.kill(os.getpid(), signal.SIGTERM) if i == 6 else None
    with pytest.raises(Interrupted) as stopped:
        cct.train(config, hps, seeds, make_buffer(), callback=sigterm_at_6, checkpoints=Checkpoints(tmp_path, "cc"))
    assert stopped.value.step == 7
    assert Checkpoints(tmp_path, "cc").steps() == [7]
    resumed, history = cct.train(config, hps, seeds, make_buffer(), callback=lambda i, m: None,
                                checkpoints=Checkpoints(tmp_path, "cc"))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["step"] for r in history] == [r["step"] for r in full_history]
    np.testing.assert_allclose(history[-1]["loss"], full_history[-1]["loss"])
    for f in (tmp_path / "checkpoints" / "_resume" / "cc" / "7").rglob("*"):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(b"garbage")
    with pytest.raises(OntogenyError, match="corrupt or unreadable"):
        cct.train(config, hps, seeds, make_buffer(), checkpoints=Checkpoints(tmp_path, "cc"))


def test_a_stateless_stream_resumes_without_replaying_its_batches(tmp_path):
    """A stream whose batch i depends on i alone (the direct stream) is not replayed on resume:
    only batch 0 (the init) and the steps still to run are drawn, and the result is unchanged."""
    import os
    import signal

    from dynamics.loop import Checkpoints, Interrupted

    class Stream:
        stateless = True

        def __init__(self):
            self.calls = []

        def __call__(self, i):
            self.calls.append(i)
            return np.random.default_rng(500 + i).normal(size=(32, 2, 8)).astype(np.float32)

    config = cc.CrosscoderConfig(n_snapshots=2, d_model=8, n_features=16, arch="jumprelu", steps=12, batch_size=32,
                                 lr=1e-2, dead_tokens=64)
    hps, seeds = [{"l1": 0.3}], [0]
    full, _ = cct.train(config, hps, seeds, Stream())
    with pytest.raises(Interrupted):
        cct.train(config, hps, seeds, Stream(), checkpoints=Checkpoints(tmp_path, "cc"),
                  callback=lambda i, m: os.kill(os.getpid(), signal.SIGTERM) if i == 4 else None)
    stream = Stream()
    resumed, _ = cct.train(config, hps, seeds, stream, checkpoints=Checkpoints(tmp_path, "cc"))
    assert stream.calls == [0] + list(range(5, 12))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_similarity_token_share_and_purity_match_brute_force():
    rng = np.random.default_rng(7)
    N, C, D = 60, 3, 5
    x = rng.normal(size=(N, C, D))
    x[:, 1] = 2.0 * x[:, 0] @ np.linalg.qr(rng.normal(size=(D, D)))[0] + 3.0   # a rotated, scaled, shifted copy
    H = np.eye(N) - 1.0 / N
    for c, got in enumerate(em.similarity_to_first(x)):
        K, L = H @ x[:, 0] @ x[:, 0].T @ H, H @ x[:, c] @ x[:, c].T @ H           # centred Gram matrices (HSIC form)
        assert got == pytest.approx(np.trace(K @ L) / np.sqrt(np.trace(K @ K) * np.trace(L @ L)), rel=1e-9)
    assert em.similarity_to_first(x)[1] == pytest.approx(1.0)
    tokens = rng.integers(0, 4, (6, 10))
    acts = rng.normal(size=(6, 10, C, D)) + 3.0 * rng.normal(size=(4, 1, D))[tokens]
    fit_means = {(t, c): np.mean([acts[b, s, c] for b in range(0, 6, 2) for s in range(10) if tokens[b, s] == t], 0)
                 for t in range(4) for c in range(C)}
    overall = acts[0::2].reshape(-1, C, D).mean(0)
    for c, got in enumerate(em.token_r2(tokens, acts)):
        sse = sum(np.sum((acts[b, s, c] - fit_means[tokens[b, s], c]) ** 2) for b in range(1, 6, 2) for s in range(10))
        sst = sum(np.sum((acts[b, s, c] - overall[c]) ** 2) for b in range(1, 6, 2) for s in range(10))
        assert got == pytest.approx(1 - sse / sst, rel=1e-9)
    f = np.maximum(rng.normal(size=(60, 4)), 0)
    f[:, 3] = 0.0
    toks = rng.integers(0, 5, 60)
    want = [max(sum(f[n, i] for n in range(60) if toks[n] == t) for t in range(5)) / f[:, i].sum() for i in range(3)]
    np.testing.assert_allclose(em.token_purity(toks, f), want + [0.0])
