"""Crosscoders across training snapshots: one sparse dictionary shared by C snapshots of one site.

Shapes: N tokens, C snapshots (checkpoints), D width, F features. Activations x_NCD are normalised per
snapshot to mean norm sqrt(D) (`normaliser`). Parameters are a plain dict:

    W_enc [C, D, F]   b_enc [F]   W_dec [F, C, D]   b_dec [C, D]   (+ log_threshold [F], JumpReLU)

    h_NF   = sum_c (x_c - b_dec_c) W_enc_c + b_enc          (one shared pre-activation)
    x_hat_c = f_c W_dec_c + b_dec_c

Subtracting b_dec before encoding is our choice (standard SAE practice) [reconstructed].
Architectures (`arch`):
  relu       f = ReLU(h); penalty l1 * sum_i f_i sum_c ||W_dec_ic||           (Anthropic)
  jumprelu   f_ic = h_i H(h_i ||W_dec_ic|| - exp(tau_i)), gated per snapshot; the threshold
             gets the straight-through (rectangle-kernel, bandwidth `jump_eps`) gradient;
             penalty l1 * sum_i p_i (1 + p_i / freq_scale),
             p_i = mean_{tokens,c} tanh(tanh_c f_ic ||W_dec_ic||)                (Ge et al.)
  batchtopk  keep the k*N largest scores h_i sum_c ||W_dec_ic|| of the batch (ReLU'd h); at
             inference a threshold (running mean of the smallest kept score) replaces the batch
             selection, so tokens are encoded independently                  (Minder et al.)
Shared archs return f_NF, JumpReLU returns f_NFC.

Training: init W_enc = W_dec^T with random unit directions scaled by the decoder norm (of
`init_norms`) that gives the lowest initial reconstruction error; b_dec = data mean; the
sparsity weight ramps in linearly over `l1_ramp` of the steps; Adam with linear warmup and a
linear decay to 0 over the last `decay` of the steps. Dead features (no firing for
`dead_tokens` tokens) are tracked, and AuxK (`aux_k` > 0) reconstructs the residual from
the top-`aux_k` dead latents. Every `resample_every` steps (before the final decay) dead
features are resampled (Bricken et al. 2023): each gets the direction of one batch input drawn
with probability proportional to its squared reconstruction error, decoder norm = mean alive
decoder norm, encoder norm = `resample_enc_scale` x mean alive encoder norm, b_enc = 0, Adam
moments zeroed. Per-member hyperparameters hp = {"l1", "k"} are traced values,
so `make_train_step(config, n_members=K)` vmaps one compiled step over K crosscoders.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.errors import require

ARCHS = ("relu", "jumprelu", "batchtopk")


@dataclasses.dataclass(frozen=True)
class CrosscoderConfig:
    n_snapshots: int = 16         # snapshots the dictionary spans, spread evenly over the series (0 = all, at most 16)
    d_model: int = 128            # width of the activations read (a study sets it from the run)
    n_features: int = 512         # dictionary size (features shared by all snapshots)
    arch: str = "batchtopk"       # relu | jumprelu (Ge et al.'s) | batchtopk
    steps: int = 2000             # crosscoder optimizer steps
    batch_size: int = 512         # activation rows (tokens) per step
    lr: float = 1e-3              # Adam peak learning rate
    warmup: float = 0.05          # fraction of steps with a linear lr warmup
    decay: float = 0.2            # fraction of steps at the end with a linear decay to 0
    l1_ramp: float = 0.1          # fraction of steps over which the sparsity weight ramps in
    init_norms: tuple[float, ...] = tuple(float(x) for x in np.geomspace(0.02, 2.0, 21))  # decoder norms tried at init
    jump_eps: float = 0.1         # jumprelu: straight-through kernel bandwidth (Ge et al. quote 4 at Pythia scale)
    jump_init_threshold: float = 0.1  # jumprelu: initial threshold of every feature
    tanh_c: float = 4.0           # jumprelu: c in the tanh(c |f| ||d||) sparsity penalty
    freq_scale: float = 0.01      # jumprelu: frequency scale of the penalty's p (1 + p / scale) term
    aux_k: int = 0                # AuxK: dead latents that reconstruct the residual (0 = off)
    aux_coef: float = 1.0 / 8     # weight of the AuxK loss
    dead_tokens: int = 100_000    # a feature silent for this many tokens is dead
    threshold_momentum: float = 0.99  # batchtopk: momentum of the running inference threshold
    resample_every: int = 0       # resample dead features every this many steps (0 = off)
    resample_enc_scale: float = 0.2   # norm of a resampled encoder row relative to the live rows'

    def unused(self) -> dict[str, str]:
        """Fields the arch (or a disabled option) leaves without effect: setting one is refused."""
        keys = {}
        if self.arch != "jumprelu":
            keys.update({k: f"{k} belongs to arch=jumprelu and arch={self.arch}"
                         for k in ("jump_eps", "jump_init_threshold", "tanh_c", "freq_scale")})
        if self.arch != "batchtopk":
            keys["threshold_momentum"] = f"threshold_momentum belongs to arch=batchtopk and arch={self.arch}"
        if not self.aux_k:
            keys["aux_coef"] = "aux_k=0 turns AuxK off"
        if not self.resample_every:
            keys["resample_enc_scale"] = "resample_every=0 turns resampling off"
        return keys

    def __post_init__(self):
        require(self.arch in ARCHS, f"crosscoder arch={self.arch!r}; choose one of {', '.join(ARCHS)}")
        # n_snapshots = 0 is left for a caller to set from its series (`init_state` checks the count)
        require(self.n_snapshots >= 0, f"crosscoder n_snapshots={self.n_snapshots} must be >= 0 (0 = the series' count)")
        for name in ("d_model", "n_features", "steps", "batch_size"):
            require(getattr(self, name) >= 1, f"crosscoder {name}={getattr(self, name)} must be positive")
        require(self.lr > 0 and 0 <= self.warmup < 1 and 0 <= self.decay < 1 and self.warmup + self.decay <= 1,
                "crosscoder lr must be > 0 and warmup + decay fractions must lie in [0, 1]")
        require(len(self.init_norms) >= 1 and min(self.init_norms) > 0, "init_norms must hold positive norms")
        require(self.jump_eps > 0 and self.jump_init_threshold > 0, "jump_eps and jump_init_threshold must be > 0")
        require(0 <= self.aux_k <= self.n_features, f"aux_k={self.aux_k} must lie in [0, n_features]")
        require(self.resample_every >= 0 and self.resample_enc_scale > 0,
                "resample_every must be >= 0 (0 = off) and resample_enc_scale > 0")


# ----------------------------------------------------------------------------- data scaling
def normaliser(x_NCD) -> np.ndarray:
    """[C] factors that bring each snapshot to mean token norm sqrt(D)."""
    x = np.asarray(x_NCD, np.float64)
    return (math.sqrt(x.shape[-1]) / np.linalg.norm(x, axis=-1).mean(0)).astype(np.float32)


# ----------------------------------------------------------------------------- JumpReLU gate
@jax.custom_vjp
def step_ste(z, theta, eps):
    """H(z - theta) with the straight-through threshold gradient -(1/eps) K((z - theta)/eps),
    K the unit rectangle on [-1/2, 1/2]; no gradient flows to z."""
    return (z > theta).astype(z.dtype)


def _step_fwd(z, theta, eps):
    return step_ste(z, theta, eps), (z, theta, eps)


def _step_bwd(res, g):
    z, theta, eps = res
    kernel = (jnp.abs((z - theta) / eps) <= 0.5).astype(z.dtype) / eps
    d_theta = -g * kernel
    shape = jnp.shape(theta)
    d_theta = d_theta.sum(axis=tuple(range(d_theta.ndim - len(shape))))   # broadcast leading axes
    d_theta = d_theta.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)
    return jnp.zeros_like(z), d_theta.reshape(shape), jnp.zeros_like(eps)


step_ste.defvjp(_step_fwd, _step_bwd)


# ----------------------------------------------------------------------------- forward
def decoder_norms(params) -> jax.Array:
    """[F, C] norm of every feature's decoder vector at every snapshot."""
    return jnp.linalg.norm(params["W_dec"], axis=-1)


def preacts(params, x_NCD):
    return jnp.einsum("ncd,cdf->nf", x_NCD - params["b_dec"], params["W_enc"]) + params["b_enc"]


def largest_mask(score, count, axis=None):
    """Boolean mask of the `count` largest entries of a non-negative `score` (over all entries,
    or along `axis`); `count` may be traced. Zeros are never kept.

    Exact selection by bisection on the float32 bit pattern (monotone for non-negative floats):
    32 compare-and-count passes, several times faster on CPU than a sort or `lax.top_k` at
    crosscoder batch sizes. Ties at the boundary value are all dropped.
    """
    bits = jax.lax.bitcast_convert_type(score.astype(jnp.float32), jnp.int32)
    keep_dims = axis is not None
    hi = jnp.max(bits, axis=axis, keepdims=keep_dims)          # count(bits > hi) = 0 <= count
    lo = jnp.full_like(hi, -1)                                 # count(bits > lo) = all

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(bits > mid, axis=axis, keepdims=keep_dims) <= count
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    _, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return bits > hi


def batch_topk_mask(score_NF, k):
    """Boolean mask keeping the k*N largest scores of the batch; k may be traced."""
    return largest_mask(score_NF, k * score_NF.shape[0])


def encode(params, x_NCD, config: CrosscoderConfig, hp=None, threshold=None):
    """Latents: f_NF (relu, batchtopk) or f_NFC (jumprelu).

    batchtopk: batch selection with hp["k"] when `threshold` is None, else score > threshold.
    """
    h = preacts(params, x_NCD)
    norms = decoder_norms(params)
    if config.arch == "relu":
        return jax.nn.relu(h)
    if config.arch == "jumprelu":
        z = h[:, :, None] * norms[None]
        gate = step_ste(z, jnp.exp(params["log_threshold"])[:, None], jnp.asarray(config.jump_eps, h.dtype))
        return h[:, :, None] * gate
    h = jax.nn.relu(h)
    score = h * norms.sum(-1)
    keep = batch_topk_mask(score, hp["k"]) if threshold is None else score > threshold
    return jnp.where(keep, h, 0.0)


def decode(params, f):
    """x_hat_NCD from f_NF (shared) or f_NFC (per snapshot)."""
    if f.ndim == 2:
        return jnp.einsum("nf,fcd->ncd", f, params["W_dec"]) + params["b_dec"]
    return jnp.einsum("nfc,fcd->ncd", f, params["W_dec"]) + params["b_dec"]


def active_NFC(f, n_snapshots: int):
    """Boolean activity per snapshot (shared latents count as active in every snapshot)."""
    f = f if f.ndim == 3 else jnp.broadcast_to(f[:, :, None], f.shape + (n_snapshots,))
    return f > 0


# ----------------------------------------------------------------------------- init
def _unit_directions(config: CrosscoderConfig, key):
    u = jax.random.normal(key, (config.n_features, config.n_snapshots, config.d_model))
    return u / jnp.linalg.norm(u, axis=-1, keepdims=True)


def params_with_norm(config: CrosscoderConfig, key, x_NCD, norm):
    """W_dec = norm * unit directions, W_enc = W_dec^T, b_dec = data mean."""
    return _params_from_units(config, _unit_directions(config, key), x_NCD, norm)


def _params_from_units(config: CrosscoderConfig, unit_FCD, x_NCD, norm):
    w_dec = norm * unit_FCD
    params = {"W_enc": jnp.transpose(w_dec, (1, 2, 0)), "b_enc": jnp.zeros(config.n_features),
              "W_dec": w_dec, "b_dec": x_NCD.mean(0)}
    if config.arch == "jumprelu":
        params["log_threshold"] = jnp.full(config.n_features, math.log(config.jump_init_threshold))
    return params


def reconstruction_error(params, x_NCD, config, hp):
    """Mean over tokens of sum_c ||x_c - x_hat_c||^2."""
    x_hat = decode(params, encode(params, x_NCD, config, hp))
    return jnp.sum((x_NCD - x_hat) ** 2, axis=(1, 2)).mean()


def init_errors(config: CrosscoderConfig, key, x_NCD, hp, norms=None):
    """[len(norms)] initial reconstruction error for each candidate decoder norm.

    The candidates run one after another (`lax.map`), not vmapped: a vmap held all of them at
    once, 21 copies of the dictionary and its [N, F, C] latents, which took 5 GB at F = 1024
    over 32 snapshots and would take ~28 GB at F = 4096."""
    norms = jnp.asarray(config.init_norms if norms is None else norms)
    unit_FCD = _unit_directions(config, key)
    error = lambda n: reconstruction_error(_params_from_units(config, unit_FCD, x_NCD, n), x_NCD, config, hp)
    return jax.lax.map(error, norms)


def init_params(config: CrosscoderConfig, key, x_NCD, hp):
    """Parameters with the candidate decoder norm of lowest initial reconstruction error."""
    errors = init_errors(config, key, x_NCD, hp)
    best = jnp.asarray(config.init_norms)[jnp.argmin(errors)]
    return params_with_norm(config, key, x_NCD, best)


# ----------------------------------------------------------------------------- training
def lr_schedule(config: CrosscoderConfig):
    warm = max(1, int(config.warmup * config.steps))
    decay_start = int((1 - config.decay) * config.steps)

    def schedule(step):
        up = jnp.minimum(1.0, (step + 1) / warm)
        down = jnp.clip((config.steps - step) / max(1, config.steps - decay_start), 0.0, 1.0)
        return config.lr * up * down
    return schedule


def make_optimizer(config: CrosscoderConfig):
    return optax.adam(lr_schedule(config), b1=0.9, b2=0.999)


def init_state(config: CrosscoderConfig, key, x_NCD, hp) -> dict:
    require(config.n_snapshots == x_NCD.shape[1], f"crosscoder n_snapshots={config.n_snapshots} but the activations "
                                                  f"hold {x_NCD.shape[1]} snapshots; set it to the series' count")
    params = init_params(config, key, x_NCD, hp)
    return {"params": params, "opt_state": make_optimizer(config).init(params), "step": jnp.zeros((), jnp.int32),
            "since_fired": jnp.zeros(config.n_features, jnp.int32), "threshold": jnp.zeros(())}


def sparsity_penalty(params, f, config: CrosscoderConfig):
    norms = decoder_norms(params)
    if config.arch == "relu":
        return (f @ norms.sum(-1)).mean()
    if config.arch == "jumprelu":
        p = jnp.tanh(config.tanh_c * f * norms[None]).mean(axis=(0, 2))
        return jnp.sum(p * (1.0 + p / config.freq_scale))
    return jnp.zeros(())


def aux_loss(params, x_NCD, x_hat_NCD, h_NF, dead_F, config: CrosscoderConfig):
    """AuxK: the top-aux_k dead latents reconstruct the residual x - x_hat."""
    err = jax.lax.stop_gradient(x_NCD - x_hat_NCD)
    dead_h = jnp.where(dead_F[None], jax.nn.relu(h_NF), 0.0)
    f_aux = jnp.where(largest_mask(dead_h, config.aux_k, axis=1), dead_h, 0.0)
    err_hat = jnp.einsum("nf,fcd->ncd", f_aux, params["W_dec"])
    # same units as the reconstruction loss (sum over snapshots and width, mean over tokens), so
    # aux_coef is relative to it as in Gao et al. (whose losses are both MSE)
    loss = jnp.sum((err - err_hat) ** 2, axis=(1, 2)).mean()
    return jnp.where(dead_F.any(), loss, 0.0)


def loss_fn(params, state, x_NCD, hp, config: CrosscoderConfig):
    h = preacts(params, x_NCD)
    f = encode(params, x_NCD, config, hp)
    x_hat = decode(params, f)
    recon = jnp.sum((x_NCD - x_hat) ** 2, axis=(1, 2)).mean()
    ramp = jnp.minimum(1.0, (state["step"] + 1) / max(1, config.l1_ramp * config.steps))
    loss = recon + ramp * hp["l1"] * sparsity_penalty(params, f, config)
    if config.aux_k > 0:
        loss = loss + config.aux_coef * aux_loss(params, x_NCD, x_hat, h, state["since_fired"] >= config.dead_tokens,
                                                 config)
    return loss, (f, h, recon)


def train_step(state, x_NCD, hp, config: CrosscoderConfig):
    """One Adam step on a batch; returns (state, metrics)."""
    (loss, (f, h, recon)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state, x_NCD, hp, config)
    updates, opt_state = make_optimizer(config).update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    active = active_NFC(f, config.n_snapshots)
    fired = active.any(axis=(0, 2))
    n = x_NCD.shape[0]
    since = jnp.where(fired, 0, jnp.minimum(state["since_fired"] + n, 2 ** 30))
    threshold = state["threshold"]
    if config.arch == "batchtopk":
        score = f * decoder_norms(state["params"]).sum(-1)
        min_kept = jnp.min(jnp.where(f > 0, score, jnp.inf))
        min_kept = jnp.where(jnp.isfinite(min_kept), min_kept, threshold)
        m = config.threshold_momentum
        threshold = jnp.where(state["step"] == 0, min_kept, m * threshold + (1 - m) * min_kept)
    total = jnp.sum((x_NCD - x_NCD.mean(0)) ** 2)
    metrics = {"loss": loss, "explained_variance": 1.0 - recon * n / total,
               "l0": active.sum(1).mean(), "dead_fraction": (since >= config.dead_tokens).mean()}
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "since_fired": since,
           "threshold": threshold}
    return new, metrics


@functools.lru_cache(maxsize=32)
def make_train_step(config: CrosscoderConfig, n_members: int | None = None):
    """Jitted step(state, x_NCD, hp). With n_members, state and hp carry a leading member
    axis and the step is vmapped over it (the batch is shared). Cached per (config, K)."""
    fn = lambda state, x, hp: train_step(state, x, hp, config)
    if n_members is None:
        return jax.jit(fn, donate_argnums=0)
    return jax.jit(jax.vmap(fn, in_axes=(0, None, 0)), donate_argnums=0)


def training_bytes(config: CrosscoderConfig, n_members: int = 1) -> int:
    """Host bytes that training `n_members` crosscoders holds, estimated: the parameters with
    Adam's two moments and the gradients (4 copies), and eight latent-sized temporaries of the
    step ([N, F, C] for jumprelu, [N, F] otherwise). [choice] Eight is what XLA's CPU memory
    analysis and the peak RSS showed at 32 snapshots, width 512, 1024 features (1.1 GB)."""
    C, D, F, N = config.n_snapshots, config.d_model, config.n_features, config.batch_size
    params = 2 * C * D * F + C * D + 2 * F
    latents = N * F * (C if config.arch == "jumprelu" else 1)
    return 4 * n_members * (4 * params + 8 * latents)


@functools.lru_cache(maxsize=32)
def make_init(config: CrosscoderConfig, n_members: int | None = None):
    fn = lambda key, x, hp: init_state(config, key, x, hp)
    return jax.jit(fn if n_members is None else jax.vmap(fn, in_axes=(0, None, 0)))


def stack_hps(hps: list[dict]) -> dict:
    return {"l1": jnp.asarray([float(h.get("l1", 0.0)) for h in hps], jnp.float32),
            "k": jnp.asarray([int(h.get("k", 1)) for h in hps], jnp.int32)}


def one_hp(hp: dict) -> dict:
    return {"l1": jnp.asarray(float(hp.get("l1", 0.0)), jnp.float32), "k": jnp.asarray(int(hp.get("k", 1)), jnp.int32)}
