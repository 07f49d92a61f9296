"""The training step's faster pieces against the plain ones: layer norm and GELU through their
recomputing custom_vjp backward (against autodiff of the plain functions), and AdamW over one
flat buffer (against optax's AdamW, step by step)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import train as train_lib
from models import gpt

CONFIG = gpt.GPTConfig(vocab_size=23, context=16, n_layer=2, n_head=2, d_model=32)


def plain_layer_norm(x, scale, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def layer_norm_vjp_float64(x, scale, g, eps=1e-5):
    """The layer norm's input, scale and bias gradients written out in float64."""
    x, scale, g = (np.asarray(a, np.float64) for a in (x, scale, g))
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    xhat, gs = (x - mean) * rstd, g * scale
    dx = rstd * (gs - gs.mean(-1, keepdims=True) - xhat * (gs * xhat).mean(-1, keepdims=True))
    return dx, (g * xhat).sum((0, 1)), g.sum((0, 1))


def test_layer_norm_backward_is_as_accurate_as_autodiff():
    """Against float64: never more than twice autodiff's own float32 error; on ordinary rows
    equal to autodiff's to 1e-5. Hard rows: constant (variance 0, 1/std = 1/sqrt(eps)), scaled
    by 1e4, and a spread of 1e-3 on an offset of 100 (where float32 itself loses digits)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 32)).astype(np.float32)
    x[0, 0] = 7.0
    x[1, 1] *= 1e4
    x[2, 2] = x[2, 2] * 1e-3 + 100.0
    scale, bias = rng.normal(size=32).astype(np.float32), rng.normal(size=32).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    y0, vjp0 = jax.vjp(plain_layer_norm, x, scale, bias)
    y1, vjp1 = jax.vjp(gpt.layer_norm_recomputed, x, scale, bias)
    for ours, autodiff, exact in zip(vjp1(g), vjp0(g), layer_norm_vjp_float64(x, scale, g)):
        assert np.all(np.isfinite(ours))
        assert np.abs(ours - exact).max() <= 2 * np.abs(autodiff - exact).max() + 1e-6 * np.abs(exact).max()
    ordinary = np.ones((3, 5), bool)
    ordinary[0, 0] = ordinary[1, 1] = ordinary[2, 2] = False
    np.testing.assert_allclose(y1[ordinary], y0[ordinary], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vjp1(g)[0][ordinary], vjp0(g)[0][ordinary], rtol=1e-5, atol=1e-6)


def test_gelu_backward_equals_autodiff_across_its_range():
    x = jnp.concatenate([jnp.linspace(-12, 12, 2001), jnp.asarray([-1e4, -50.0, 0.0, 50.0, 1e4])])
    want = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=True)))(x)
    got = jax.vmap(jax.grad(gpt.gelu_recomputed))(x)
    np.testing.assert_array_equal(gpt.gelu_recomputed(x), jax.nn.gelu(x, approximate=True))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def loss_and_grads(params, batch, recompute: bool, monkeypatch):
    monkeypatch.setattr(gpt, "RECOMPUTE_BACKWARD", recompute)
    loss = train_lib.lm_loss(CONFIG)
    return jax.jit(jax.value_and_grad(loss))(params, batch, None)   # traced here, with the flag as set


@pytest.fixture
def params_and_batch():
    params = gpt.init_params(CONFIG, jax.random.PRNGKey(0))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    x = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (4, CONFIG.context + 1)).astype(np.int32)
    return params, {"inputs": x[:, :-1], "targets": x[:, 1:]}


def test_the_models_loss_and_gradients_are_unchanged(params_and_batch, monkeypatch):
    params, batch = params_and_batch
    loss0, grads0 = loss_and_grads(params, batch, False, monkeypatch)
    loss1, grads1 = loss_and_grads(params, batch, True, monkeypatch)
    assert float(loss1) == float(loss0)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads1), jax.tree.leaves(grads0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max()), err_msg=str(path))


def test_recomputed_backward_under_vmap_equals_each_member(params_and_batch, monkeypatch):
    """Members train vmapped (dynamics.members): the custom_vjp must batch like autodiff."""
    params, batch = params_and_batch
    other = jax.tree.map(lambda p: p * 1.1, params)
    monkeypatch.setattr(gpt, "RECOMPUTE_BACKWARD", True)
    loss = train_lib.lm_loss(CONFIG)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
    grads = jax.jit(jax.vmap(jax.grad(loss), (0, None, None)))(stacked, batch, None)
    for k, p in enumerate((params, other)):
        want = jax.jit(jax.grad(loss))(p, batch, None)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda g: g[k], grads)), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("clip", [1.0, 0.0, 1e-3])
def test_flat_adamw_updates_equal_optax_adamw(params_and_batch, clip):
    """The same gradients into both optimizers for eight steps (warmup, the decay mask, clipping
    active or not): every update and state equal optax's to float32 rounding."""
    params, _ = params_and_batch
    tc = train_lib.TrainConfig(steps=10, batch_size=4, lr=3e-3, warmup=3, grad_clip=clip)
    optax_opt, flat_opt = train_lib.scheduled_adamw(tc), train_lib.flat_adamw(tc)
    s0, s1 = optax_opt.init(params), flat_opt.init(params)
    u0_fn, u1_fn = jax.jit(optax_opt.update), jax.jit(flat_opt.update)
    for step in range(8):
        key = jax.random.PRNGKey(step)
        grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape) * 10.0 ** (step % 3 - 2), params)
        u0, s0 = u0_fn(grads, s0, params)
        u1, s1 = u1_fn(grads, s1, params)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u0)):
            np.testing.assert_allclose(a, b, rtol=5e-5, atol=1e-12)
        params = jax.tree.map(lambda p, u: p + u, params, u0)
    assert int(s1.count) == 8


def test_training_with_every_faster_piece_follows_the_plain_run(params_and_batch):
    """Six steps of the jitted train step with the recomputed backward and the flat AdamW: the
    losses equal the plain step's to 1e-5 relative."""
    params, batch = params_and_batch
    tc = train_lib.TrainConfig(steps=10, batch_size=4, lr=3e-3, warmup=3)
    losses = {}
    for faster in (False, True):
        optimizer = train_lib.flat_adamw(tc) if faster else train_lib.scheduled_adamw(tc)
        step = train_lib.make_train_step(train_lib.lm_loss(CONFIG), optimizer, dropout=False,
                                         recompute_backward=faster)
        state, losses[faster] = train_lib.init_state(params, optimizer, 0), []
        for _ in range(6):
            state, metrics = step(state, batch)
            losses[faster].append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert losses[True][-1] < losses[True][0]


def test_the_train_step_recomputes_while_analyses_keep_forward_mode(params_and_batch):
    """The training step traces its gradients through the recomputing backward; outside it the
    model is plain autodiff, so forward-mode derivatives (jvp, Hessian-vector products) work."""
    params, batch = params_and_batch
    tc = train_lib.TrainConfig(steps=10, batch_size=4, warmup=3)
    optimizer = train_lib.scheduled_adamw(tc)
    state = train_lib.init_state(params, optimizer, 0)
    for recompute in (True, False):
        step = train_lib.make_train_step(train_lib.lm_loss(CONFIG), optimizer, dropout=False,
                                         recompute_backward=recompute)
        assert ("custom_vjp" in str(jax.make_jaxpr(step)(state, batch))) == recompute
    assert gpt.RECOMPUTE_BACKWARD is False
    loss = train_lib.lm_loss(CONFIG)
    tangent = jax.tree.map(jnp.ones_like, params)
    _, directional = jax.jvp(lambda p: loss(p, batch, None), (params,), (tangent,))
    assert np.isfinite(float(directional))
