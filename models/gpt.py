"""Ontogeny's character GPT, the family trained here (`models.family`; no Hugging Face import):
a decoder-only GPT as a pure function of a plain params pytree.

Layout (L layers, D width, F = mlp_ratio * D hidden, V vocab, S positions up to `context`).
Every leaf under "blocks" has a leading layer axis L, so the blocks run under `lax.scan` (one
compiled block whatever the depth) and a stacked checkpoint series simply adds one more leading
axis C:

    wte: [V, D]   wpe: [context, D]
    blocks/ln1/{scale,bias}: [L, D]          blocks/attn/w_qkv: [L, D, 3D]  b_qkv: [L, 3D]
    blocks/attn/w_out: [L, D, D]  b_out: [L, D]   blocks/ln2/{scale,bias}: [L, D]
    blocks/mlp/w_in: [L, D, F]  b_in: [L, F]  w_out: [L, F, D]  b_out: [L, D]
    ln_f/{scale,bias}: [D]        lm_head: [D, V]  (absent when embeddings are tied)

`apply(params, tokens_BS, config, capture=...)` returns logits and, on request, the
intermediates analyses need (names in `CAPTURES`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Iterable

import jax
import jax.numpy as jnp
from einops import rearrange

from models import layers
from models.errors import require
from models.family import CAPTURES, PER_LAYER

NAME = "gpt"  # configs of this family carry no `family` field (model.json of a run trained here)


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 65              # tokens in the vocabulary (studies take it from their tokenizer)
    context: int = 128                # positions the model attends over (block size)
    n_layer: int = 4                  # transformer blocks
    n_head: int = 4                   # attention heads per block (must divide d_model)
    d_model: int = 128                # residual-stream width
    mlp_ratio: int = 4                # MLP hidden width as a multiple of d_model
    dropout: float = 0.0              # dropout rate in training (0 = off)
    tied_embeddings: bool = True      # share the token embedding with the output head

    def __post_init__(self):
        require(self.vocab_size >= 2, f"model.vocab_size={self.vocab_size} must be at least 2")
        for name in ("context", "n_layer", "n_head", "d_model", "mlp_ratio"):
            require(getattr(self, name) >= 1, f"model.{name}={getattr(self, name)} must be a positive integer")
        require(self.d_model % self.n_head == 0,
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; "
                f"choose a width that is a multiple of the head count")
        require(0.0 <= self.dropout < 1.0, f"model.dropout={self.dropout} must be in [0, 1)")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_mlp(self) -> int:
        return self.mlp_ratio * self.d_model


Config = GPTConfig


def init_params(config: GPTConfig, key: jax.Array) -> dict:
    """nanoGPT's init: N(0, 0.02), residual output projections scaled by 1/sqrt(2L)."""
    L, D, F, V, C = config.n_layer, config.d_model, config.d_mlp, config.vocab_size, config.context
    k = iter(jax.random.split(key, 8))
    std, std_resid = 0.02, 0.02 / math.sqrt(2 * L)
    normal = lambda key, shape, s: s * jax.random.normal(key, shape, jnp.float32)
    ln = lambda *lead: {"scale": jnp.ones((*lead, D)), "bias": jnp.zeros((*lead, D))}
    params = {
        "wte": normal(next(k), (V, D), std),
        "wpe": normal(next(k), (C, D), std),
        "blocks": {
            "ln1": ln(L),
            "attn": {"w_qkv": normal(next(k), (L, D, 3 * D), std), "b_qkv": jnp.zeros((L, 3 * D)),
                     "w_out": normal(next(k), (L, D, D), std_resid), "b_out": jnp.zeros((L, D))},
            "ln2": ln(L),
            "mlp": {"w_in": normal(next(k), (L, D, F), std), "b_in": jnp.zeros((L, F)),
                    "w_out": normal(next(k), (L, F, D), std_resid), "b_out": jnp.zeros((L, D))},
        },
        "ln_f": ln(),
    }
    if not config.tied_embeddings:
        params["lm_head"] = normal(next(k), (D, V), std)
    return params


def n_params(params, config: GPTConfig | None = None, *, non_embedding: bool = False) -> int:
    count = sum(int(x.size) for x in jax.tree.leaves(params))
    if non_embedding:
        count -= int(params["wpe"].size)
    return count


def dense(x, w):
    """x[..., D] @ w[D, F] as one 2-D matmul over the flattened leading axes.

    [choice] On XLA CPU the weight gradient of a batched `x_BSD @ w_DF` is a dot contracting
    two axes (B and S), which trained the tiny shape 1.5-2x slower than the same product on
    [B*S, D] rows (docs/benchmarks/2026-11-29-xeon.md; tests/test_train.py checks the losses are
    unchanged).
    """
    lead = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*lead, w.shape[-1])


# [choice] Read when a function is traced; off outside the training steps, which trace their
# gradients under `recomputing_backward` (dynamics.train, dynamics.members): the recomputing
# backward passes below made a training step 4-10% faster (2-core Intel Xeon, AVX-512,
# 2026-12-07) and agree with autodiff's to ~1e-6 relative (tests/test_fused_backward.py), but a
# custom_vjp has no forward-mode rule, so analyses that take jvps or Hessians through the model
# need the plain functions.
RECOMPUTE_BACKWARD = False  # layer norm and GELU through their one-pass custom_vjp backward


@contextlib.contextmanager
def recomputing_backward(on: bool = True):
    """Trace the model's layer norms and GELUs with (or without) their recomputing backward
    inside this block: `with gpt.recomputing_backward(): jax.grad(loss)(...)` in a jitted step."""
    global RECOMPUTE_BACKWARD
    previous, RECOMPUTE_BACKWARD = RECOMPUTE_BACKWARD, on
    try:
        yield
    finally:
        RECOMPUTE_BACKWARD = previous


def layer_norm(x, p, eps: float = 1e-5):
    if RECOMPUTE_BACKWARD:
        return layer_norm_recomputed(x, p["scale"], p["bias"], eps)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm_recomputed(x, scale, bias, eps: float = 1e-5):
    """`layer_norm` (x [..., D], scale and bias [D]) whose backward keeps only x and scale and
    recomputes the mean and 1/std in the one pass that makes the gradients:
    dx = rstd (g' - mean(g') - xhat mean(g' xhat)) with g' = g scale; dscale = sum g xhat; dbias = sum g."""
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def _layer_norm_fwd(x, scale, bias, eps):
    return layer_norm_recomputed(x, scale, bias, eps), (x, scale)


def _layer_norm_bwd(eps, saved, g):
    x, scale = saved
    mean = x.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    gs = g * scale
    dx = rstd * (gs - gs.mean(-1, keepdims=True) - xhat * (gs * xhat).mean(-1, keepdims=True))
    lead = tuple(range(x.ndim - 1))
    return dx, (g * xhat).sum(lead), g.sum(lead)


layer_norm_recomputed.defvjp(_layer_norm_fwd, _layer_norm_bwd)

_GELU_C = math.sqrt(2 / math.pi)


def gelu(x):
    """GELU, tanh approximation (`jax.nn.gelu(approximate=True)`), through `gelu_recomputed`
    when `RECOMPUTE_BACKWARD` is on."""
    return gelu_recomputed(x) if RECOMPUTE_BACKWARD else jax.nn.gelu(x, approximate=True)


@jax.custom_vjp
def gelu_recomputed(x):
    """jax.nn.gelu(x, approximate=True) whose backward keeps x and recomputes in one pass
    d/dx = (1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2, t = tanh(c (x + a x^3)), a = 0.044715."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_fwd(x):
    return gelu_recomputed(x), x


def _gelu_bwd(x, g):
    c = jnp.asarray(_GELU_C, x.dtype)
    t = jnp.tanh(c * (x + 0.044715 * x ** 3))
    return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)),)


gelu_recomputed.defvjp(_gelu_fwd, _gelu_bwd)


def _dropout(x, rate, key):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def causal_attention(q_BHSE, k_BHSE, v_BHSE, mask_SS, *, return_probs: bool = False):
    """Softmax attention with an explicit boolean mask [query positions, key positions] (True =
    may attend); the keys may be a longer cache than the queries. With `return_probs`, also the
    attention probabilities [B, H, S, T] (query, key)."""
    scores = jnp.einsum("bhse,bhte->bhst", q_BHSE, k_BHSE) / math.sqrt(q_BHSE.shape[-1])
    scores = jnp.where(mask_SS, scores, jnp.finfo(scores.dtype).min)
    probs_BHST = jax.nn.softmax(scores, axis=-1)
    out_BHSE = jnp.einsum("bhst,bhte->bhse", probs_BHST, v_BHSE)
    return (out_BHSE, probs_BHST) if return_probs else out_BHSE


def split_heads(x_BSD, n_head):
    """[B, S, D] -> [B, H, S, E] with D = H * E."""
    return rearrange(x_BSD, "b s (h e) -> b h s e", h=n_head)


def merge_heads(x_BHSE):
    """[B, H, S, E] -> [B, S, H * E]."""
    return rearrange(x_BHSE, "b h s e -> b s (h e)")


def block(p, x_BSD, config: GPTConfig, key=None):
    """One pre-LN block. Returns (new residual, attention output, MLP hidden, (k, v), attention
    probabilities [B, H, S, S])."""
    k_attn, k_resid1, k_resid2 = (None,) * 3 if key is None else jax.random.split(key, 3)
    S = x_BSD.shape[1]
    h = layer_norm(x_BSD, p["ln1"])
    qkv = dense(h, p["attn"]["w_qkv"]) + p["attn"]["b_qkv"]
    q, k, v = (split_heads(t, config.n_head) for t in jnp.split(qkv, 3, axis=-1))
    mask_SS = jnp.tril(jnp.ones((S, S), bool))
    attn, probs = causal_attention(q, k, v, mask_SS, return_probs=True)
    attn = merge_heads(attn)
    attn_out = _dropout(dense(attn, p["attn"]["w_out"]) + p["attn"]["b_out"], config.dropout, k_resid1)
    x_BSD = x_BSD + attn_out
    hidden = gelu(dense(layer_norm(x_BSD, p["ln2"]), p["mlp"]["w_in"]) + p["mlp"]["b_in"])
    x_BSD = x_BSD + _dropout(dense(hidden, p["mlp"]["w_out"]) + p["mlp"]["b_out"], config.dropout, k_resid2)
    return x_BSD, attn_out, hidden, (k, v), probs


def embed(params, tokens_BS, config: GPTConfig, *, start: int | jax.Array = 0, key=None):
    S = tokens_BS.shape[1]
    pos = jax.lax.dynamic_slice_in_dim(params["wpe"], start, S, axis=0)
    return _dropout(params["wte"][tokens_BS] + pos, config.dropout, key)


def unembed(params, h_BSD):
    """Logits from a final-normalised hidden state."""
    w = params["lm_head"] if "lm_head" in params else params["wte"].T
    return dense(h_BSD, w)


def final_norm(params, x_BSD, config: GPTConfig | None = None):
    """The final LayerNorm, what the unembedding reads."""
    return layer_norm(x_BSD, params["ln_f"])


unembedding_matrix = layers.unembedding_matrix  # [V, D]: row y is g(y), the output embedding of token y


def layer_slice(blocks, start: int, stop: int):
    return jax.tree.map(lambda a: a[start:stop], blocks)


def run_blocks(blocks, x_BSD, config: GPTConfig, *, key=None, collect: Iterable[str] = (), unroll: bool = True):
    """Apply a stack of blocks (leading axis = layers) with `lax.scan`.

    Returns (x_BSD, per-layer outputs dict with leading layer axis for the names in collect).
    Unrolled by default: on CPU the unrolled program trained ~30% faster than a rolled loop
    (the tiny shape: docs/benchmarks/2026-11-23-x86.md); `unroll=False` compiles one block body
    for deep models.
    """
    collect = tuple(collect)
    n = jax.tree.leaves(blocks)[0].shape[0]
    keys = None if key is None else jax.random.split(key, n)

    def step(x, inputs):
        p, k = inputs
        x, attn_out, hidden, _, probs = block(p, x, config, k)
        outs = {"resid": x, "attn_out": attn_out, "mlp_hidden": hidden, "attn_probs": probs}
        return x, {name: outs[name] for name in collect}

    return jax.lax.scan(step, x_BSD, (blocks, keys), unroll=unroll)


def apply(params, tokens_BS, config: GPTConfig, *, capture: Iterable[str] = (), dropout_key=None):
    """Logits [B, S, V] and a dict of the requested intermediates (see `CAPTURES`).

    Pure: dropout is active only when `dropout_key` is given (training).
    """
    capture = tuple(capture)
    unknown = set(capture) - set(CAPTURES)
    if unknown:
        raise ValueError(f"unknown capture {sorted(unknown)}; choose from {sorted(CAPTURES)}")
    k_embed, k_blocks = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    x = embed(params, tokens_BS, config, key=k_embed)
    acts = {"embed": x} if "embed" in capture else {}
    per_layer = tuple(c for c in capture if c in PER_LAYER)
    x, layer_acts = run_blocks(params["blocks"], x, config, key=k_blocks, collect=per_layer)
    acts.update(layer_acts)
    h = final_norm(params, x)
    if "final_hidden" in capture:
        acts["final_hidden"] = h
    return unembed(params, h), acts


def weight_matrices(params, config: GPTConfig | None = None) -> dict:
    """The family-neutral weight description (`models.family`): the stored matrices themselves."""
    return layers.fused_weight_matrices(params)


def logits_from_resid(params, resid_BSD, layer: int, config: GPTConfig):
    """Finish the forward pass from the residual stream after block `layer` (for splicing)."""
    x, _ = run_blocks(layer_slice(params["blocks"], layer + 1, config.n_layer), resid_BSD, config)
    return unembed(params, final_norm(params, x))


def cross_entropy(logits_BSV, targets_BS, mask_BS=None):
    """Mean next-token cross-entropy in nats (over positions where mask is true)."""
    logp = jax.nn.log_softmax(logits_BSV.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets_BS[..., None], axis=-1)[..., 0]
    if mask_BS is None:
        return nll.mean()
    mask = mask_BS.astype(nll.dtype)
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0)
