"""The latent-concept model of Jiang et al. (ICML 2024, arXiv 2403.03867) and its learner.

Generator. m binary concepts C in {0,1}^m with a joint law p(C) from a random DAG Bayes net.
Token y is one concept vector, indexed y = sum_j C_j 2^j (Y = 2^m tokens). A context x is a
partial assignment s in {0, 1, ?}^m (code 2 = unknown), indexed x = sum_j s_j 3^j (X = 3^m
contexts). The next token keeps the fixed concepts and draws the unknown ones from
p(C_unknown | C_fixed), so p(y|x) = p(C = y | C_S = s_S) exactly, by enumeration.
Contexts are drawn by sampling C ~ p and hiding each concept with probability 1 - p_fix
[reconstructed: the paper does not fix the context law], so w(x) = p_fix^|S| (1-p_fix)^(m-|S|)
p(C_S = s_S).

Bayes net [reconstructed]: a random topological order; edge j -> i (j earlier) with
probability `edge_density`; logit p(C_i = 1 | parents) = b_i + strength * sum_j w_ij (2 C_j - 1)
with b_i ~ U(-marginal_scale, marginal_scale), w_ij ~ U(0.5, 1) * random sign. strength = 0
or `independent=True` gives independent concepts.

Learner. p_hat(y|x) = softmax_y f(x)^T g(y): f is a table [X, d] or an MLP of the context's
one-hot code [X, 3m] -> d; g is an unembedding table [Y, d]. Its loss is the cross-entropy under
a weight matrix W[x, y] (the exact law w(x) p(y|x) or an empirical one); its training lives in
dynamics/latent_training.py.

Array names use this module's own letters: X contexts, Y tokens, M concepts (m of them), I the
context's input code (3m one-hot).
"""
from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from models.errors import require

UNKNOWN = 2


# ----------------------------------------------------------------------------- generator
@dataclasses.dataclass(frozen=True)
class LatentConfig:
    n_concepts: int = 4  # m binary concepts (2^m tokens, 3^m contexts)
    independent: bool = False  # independent concepts (no DAG); false: a random DAG Bayes net
    edge_density: float = 0.5  # DAG: probability of each edge
    strength: float = 0.0  # DAG: coupling strength of parents (0 = independent)
    marginal_scale: float = 0.5  # concept biases b_i ~ U(-marginal_scale, marginal_scale)
    p_fix: float = 0.5  # probability that a context fixes each concept
    seed: int = 0  # draws the DAG and the biases

    def __post_init__(self):
        require(1 <= self.n_concepts <= 8,
                f"n_concepts={self.n_concepts} must be in 1..8 (there are 2^m tokens, 3^m contexts)")
        require(0.0 <= self.edge_density <= 1.0, f"edge_density={self.edge_density} must be in [0, 1]")
        require(0.0 <= self.strength <= 1e6,
                f"strength={self.strength} must be in [0, 1e6] (0 = independent concepts; from ~1e3 on every "
                f"dependent concept is already deterministic in float64)")
        require(self.marginal_scale >= 0.0, f"marginal_scale={self.marginal_scale} must be >= 0")
        require(0.0 < self.p_fix < 1.0, f"p_fix={self.p_fix} must be in (0, 1)")


@dataclasses.dataclass(frozen=True)
class LatentProblem:
    """Everything exact about one generator (numpy; Y = 2^m tokens, X = 3^m contexts)."""
    config: LatentConfig
    order_M: np.ndarray          # topological order of the concepts
    weights_MM: np.ndarray       # w[i, j]: effect of parent j on concept i (0 = no edge)
    bias_M: np.ndarray
    token_bits_YM: np.ndarray    # C of token y
    contexts_XM: np.ndarray      # s of context x, values in {0, 1, 2=unknown}
    joint_Y: np.ndarray          # p(C = y)
    context_weight_X: np.ndarray # w(x)
    cond_XY: np.ndarray          # p(y | x)

    @property
    def n_concepts(self) -> int:
        return self.config.n_concepts

    @property
    def weight_XY(self) -> np.ndarray:
        """The exact (x, y) training law w(x) p(y|x); sums to 1."""
        return self.context_weight_X[:, None] * self.cond_XY


def token_bits(m: int) -> np.ndarray:
    """[2^m, m] concept vector of each token (bit j of y)."""
    return ((np.arange(2 ** m)[:, None] >> np.arange(m)) & 1).astype(np.int32)


def all_contexts(m: int) -> np.ndarray:
    """[3^m, m] partial assignments, digit j of x in base 3 (2 = unknown)."""
    return ((np.arange(3 ** m)[:, None] // 3 ** np.arange(m)) % 3).astype(np.int32)


def random_dag(config: LatentConfig):
    """(order [m], weights [m, m], bias [m]) of the Bayes net, a pure function of the seed."""
    m, rng = config.n_concepts, np.random.default_rng(config.seed)
    order = rng.permutation(m)
    bias = rng.uniform(-config.marginal_scale, config.marginal_scale, m)
    weights = np.zeros((m, m))
    if not config.independent:
        for a, b in itertools.combinations(range(m), 2):  # order[a] comes before order[b]
            if rng.random() < config.edge_density:
                weights[order[b], order[a]] = rng.uniform(0.5, 1.0) * rng.choice([-1.0, 1.0])
    return order, weights * config.strength, bias


def joint_law(weights_MM: np.ndarray, bias_M: np.ndarray) -> np.ndarray:
    """p(C = y) for every token: product of the nodes' conditionals (acyclic, so no normaliser)."""
    bits = token_bits(len(bias_M))
    logit_YM = bias_M + (2 * bits - 1) @ weights_MM.T
    # log sigmoid(+-logit) without overflow; at large |logit| a state underflows to exactly 0
    log_p = -np.logaddexp(0.0, np.where(bits == 1, -logit_YM, logit_YM))
    return np.exp(log_p.sum(axis=1))


def consistent(contexts_XM: np.ndarray, bits_YM: np.ndarray) -> np.ndarray:
    """[X, Y] bool: token y agrees with every concept context x fixes."""
    c, b = contexts_XM[:, None, :], bits_YM[None, :, :]
    return np.all((c == UNKNOWN) | (c == b), axis=-1)


def build_problem(config: LatentConfig) -> LatentProblem:
    m = config.n_concepts
    order, weights, bias = random_dag(config)
    bits, contexts = token_bits(m), all_contexts(m)
    joint = joint_law(weights, bias)
    mask_XY = consistent(contexts, bits)
    mass_XY = mask_XY * joint[None, :]
    marginal_X = mass_XY.sum(1)                       # p(C_S = s_S)
    # a context of probability zero is never drawn and carries no data: its row stays 0 (not 0/0)
    cond = np.divide(mass_XY, marginal_X[:, None], out=np.zeros_like(mass_XY), where=marginal_X[:, None] > 0)
    n_fixed = (contexts != UNKNOWN).sum(1)
    weight = config.p_fix ** n_fixed * (1 - config.p_fix) ** (m - n_fixed) * marginal_X
    return LatentProblem(config, order, weights, bias, bits, contexts, joint, weight / weight.sum(), cond)


def sample(problem: LatentProblem, key: jax.Array, n: int):
    """n draws (x [n], y [n]): x ~ w, then y ~ p(. | x)."""
    kx, ky = jax.random.split(key)
    x = jax.random.categorical(kx, jnp.log(jnp.asarray(problem.context_weight_X)), shape=(n,))
    logp = jnp.log(jnp.asarray(problem.cond_XY))[x]
    y = jax.random.categorical(ky, logp, axis=-1)
    return np.asarray(x), np.asarray(y)


def empirical_weight(x: np.ndarray, y: np.ndarray, n_contexts: int, n_tokens: int) -> np.ndarray:
    counts = np.zeros((n_contexts, n_tokens))
    np.add.at(counts, (x, y), 1.0)
    return counts / counts.sum()


def token_pairs(m: int) -> np.ndarray:
    """[m, 2^(m-1), 2] counterfactual token pairs (y0, y1): equal except concept i, 0 -> 1."""
    y0 = np.arange(2 ** m)
    out = []
    for i in range(m):
        base = y0[((y0 >> i) & 1) == 0]
        out.append(np.stack([base, base + 2 ** i], axis=1))
    return np.stack(out).astype(np.int32)


def context_pairs(m: int) -> np.ndarray:
    """[m, 3^(m-1), 2] context pairs (x0, x1): equal except concept i fixed to 0 vs fixed to 1."""
    x = np.arange(3 ** m)
    out = []
    for i in range(m):
        base = x[(x // 3 ** i) % 3 == 0]
        out.append(np.stack([base, base + 3 ** i], axis=1))
    return np.stack(out).astype(np.int32)


def pair_masks(problem: LatentProblem):
    """(token pairs [m, 2^(m-1)], context pairs [m, 3^(m-1)]) bool: both items have nonzero
    probability. A pair with an impossible token or context carries no data: measures skip it."""
    tok_ok, ctx_ok = problem.joint_Y > 0, problem.context_weight_X > 0
    tok, ctx = token_pairs(problem.n_concepts), context_pairs(problem.n_concepts)
    return tok_ok[tok].all(-1), ctx_ok[ctx].all(-1)


def pair_logodds(problem: LatentProblem):
    """Exact log p(y1|x) - log p(y0|x) for every concept's token pair and context.

    Returns (logodds [m, P, X], finite [m, P, X]); finite exactly where the context leaves the
    concept unknown and both tokens are possible (elsewhere the log-odds is +-inf).
    """
    pairs = token_pairs(problem.n_concepts)
    cond = problem.cond_XY.T                                   # [Y, X]
    p0, p1 = cond[pairs[..., 0]], cond[pairs[..., 1]]          # [m, P, X]
    finite = (p0 > 0) & (p1 > 0)
    with np.errstate(divide="ignore"):
        logodds = np.where(finite, np.log(np.where(finite, p1, 1.0)) - np.log(np.where(finite, p0, 1.0)), 0.0)
    return logodds, finite


def context_inputs(m: int) -> np.ndarray:
    """[3^m, 3m] one-hot code of each context (concept j's state in slots 3j..3j+2)."""
    contexts = all_contexts(m)
    return np.eye(3, dtype=np.float32)[contexts].reshape(len(contexts), 3 * m)


# ----------------------------------------------------------------------------- learner
@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    d: int = 16  # representation width of f and g
    f_kind: str = "mlp"  # context map f: mlp (network of the context code) or table
    hidden: int = 64  # MLP hidden width
    n_hidden: int = 1  # MLP hidden layers (0 = linear map)
    init_scale: float = 0.01  # std of g and of a table f at init (small: the learned part dominates)

    def __post_init__(self):
        require(self.d >= 1, f"d={self.d} must be a positive integer")
        require(self.f_kind in ("mlp", "table"), f"f_kind={self.f_kind!r} must be mlp or table")
        require(self.hidden >= 1 and self.n_hidden >= 0,
                f"hidden={self.hidden}, n_hidden={self.n_hidden} must be >= 1, >= 0")
        require(self.init_scale > 0, f"init_scale={self.init_scale} must be > 0")


def init_learner(config: LearnerConfig, m: int, seed: int, width: int | None = None) -> dict:
    """{"f": {...}, "g": [Y, d]} drawn on the host with numpy (no compile); MLP: LeCun-normal
    weights, zero biases.

    `width` < d zeroes the output columns >= width of g and of f's last layer: they get zero
    gradient (softmax f^T g never sees them) and stay zero under GD, Adam and decay, so the run
    is a width-`width` learner padded with zeros. That lets runs of different d share one
    compiled, vmapped training call.
    """
    n_ctx, n_tok, d = 3 ** m, 2 ** m, config.d
    live = (np.arange(d) < (d if width is None else width)).astype(np.float32)
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    params = {"g": config.init_scale * normal(n_tok, d) * live}
    if config.f_kind == "table":
        params["f"] = {"table": config.init_scale * normal(n_ctx, d) * live}
        return params
    sizes = [3 * m] + [config.hidden] * config.n_hidden + [d]
    params["f"] = {f"layer{i}": {"w": normal(a, b) / np.float32(np.sqrt(a)), "b": np.zeros(b, np.float32)}
                   for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}
    params["f"][f"layer{len(sizes) - 2}"]["w"] *= live
    return params


def embed(params: dict, inputs_XI: jax.Array) -> jax.Array:
    """f(x) for every context: [X, d]. `inputs_XI` is `context_inputs(m)` (ignored by a table)."""
    f = params["f"]
    if "table" in f:
        return f["table"]
    h, n = inputs_XI, len(f)
    for i in range(n):  # dict layers (not a list) so checkpoints restore without a target tree
        h = h @ f[f"layer{i}"]["w"] + f[f"layer{i}"]["b"]
        if i < n - 1:
            h = jax.nn.gelu(h)
    return h


def logits(params: dict, inputs_XI: jax.Array) -> jax.Array:
    return embed(params, inputs_XI) @ params["g"].T


def loss_fn(params: dict, inputs_XI: jax.Array, weight_XY: jax.Array) -> jax.Array:
    """Cross-entropy under the (x, y) law `weight_XY` (sums to 1)."""
    logp = jax.nn.log_softmax(logits(params, inputs_XI), axis=-1)
    return -jnp.sum(jnp.where(weight_XY > 0, weight_XY * logp, 0.0))


def conditional_entropy(weight_XY: np.ndarray) -> float:
    """The loss floor: H(Y | X) under `weight_XY`."""
    w = np.asarray(weight_XY, dtype=np.float64)
    cond = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
    return float(-np.sum(np.where(w > 0, w * np.log(np.where(w > 0, cond, 1.0)), 0.0)))
