"""NeuroMFA's neuron-interaction network, built from one checkpoint's weights (Xiao et al. 2025).

Nodes are sampled neurons; directed edges carry the weights of four matrices per block, laid
out as in the authors' code (`network_extraction.py`), for block l with s sampled residual
neurons and h sampled MLP neurons:

    A_l  (s, residual stream entering block l)  --w_qkv-->   Q_l (3s: q_j, k_j, v_j, same j)
    Q_l  --connector, weight 1-->                            C_l (s: attention context, index j)
         (q_j -> c_j only; k_j, v_j -> every c: attention mixes them; the authors' `adj`)
    C_l  --w_out (attention output)-->                       M_l (s, residual stream mid-block)
    M_l  --mlp w_in-->                                       H_l (h, MLP hidden)
    H_l  --mlp w_out-->                                      A_{l+1} (s, next block's input)

The same sampled indices are used at every checkpoint: `sample_indices(seed, config, ...)` draws
them once (leading sample axis M) and `direct_distances` / `shortest_path_distances` are pure
functions of (params, one sample's indices) with static shapes, so a checkpoint series runs
under `jax.vmap` (over the M samples, and over the C checkpoints via `dynamics.checkpoints.map_stack`).

Edge distance d_ij = 1 / |w_ij| (absent edge: +inf). Biases, norms and embeddings are ignored.
The connector edges have distance exactly 1, so under the default threshold 1 < d they never
count as direct edges (as in the authors' code); they matter only for shortest paths.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from models.errors import OntogenyError


def sample_indices(seed: int, config, n_samples: int = 10, n_resid: int = 32, n_mlp: int | None = None) -> dict:
    """Sampled neuron indices for M = n_samples networks (without replacement within a group).

    Drawn once from `seed` (numpy), then reused for every checkpoint. `config` is any family's
    config (n_layer, d_model, d_mlp).
    Returns int32 arrays with leading axis M:
      "resid": [M, L+1, s] residual neurons entering block l (l = L: after the last block),
      "head":  [M, L, s]   head-dim index j (q_j, k_j, v_j and context neuron c_j),
      "mid":   [M, L, s]   residual neurons between attention and MLP,
      "mlp":   [M, L, h]   MLP hidden neurons.
    Defaults follow the paper: s = 32, h = 2s (64).
    """
    L, D, F = config.n_layer, config.d_model, config.d_mlp
    n_mlp = 2 * n_resid if n_mlp is None else n_mlp
    if not (1 <= n_resid <= D and 1 <= n_mlp <= F and n_samples >= 1):
        raise OntogenyError(f"cannot sample {n_resid} of {D} residual / {n_mlp} of {F} MLP neurons "
                            f"({n_samples} samples); choose n_resid <= d_model and n_mlp <= {F}")
    out = {"resid": [], "head": [], "mid": [], "mlp": []}
    for sample in range(n_samples):
        rng = np.random.default_rng([seed, sample])
        draw = lambda groups, size, population: [rng.choice(population, size, replace=False) for _ in range(groups)]
        out["resid"].append(draw(L + 1, n_resid, D))
        out["head"].append(draw(L, n_resid, D))
        out["mid"].append(draw(L, n_resid, D))
        out["mlp"].append(draw(L, n_mlp, F))
    return {name: np.asarray(v, dtype=np.int32) for name, v in out.items()}


def family_weights(params: dict, config) -> dict:
    """The four matrices the network reads, for any model family: `models.families.weight_matrices`
    (gpt.py's layout; LLaMA's grouped K/V repeated per query head, SwiGLU by its up projection)."""
    from models.families import weight_matrices

    return weight_matrices(params, config)


def _take(w_LIO, rows_LR, cols_LC):
    """w[l][rows[l]][:, cols[l]] for every layer: [L, R, C]."""
    return jax.vmap(lambda w, r, c: w[r][:, c])(w_LIO, rows_LR, cols_LC)


def edge_blocks(params: dict, idx: dict) -> dict:
    """Weights of the sampled edges, one [L, n_src, n_dst] array per kind (one sample's `idx`).

    Kinds: "qkv" [L, s, 3s], "connector" [L, 3s, s], "attn_out" [L, s, s], "mlp_in" [L, s, h],
    "mlp_out" [L, h, s]. Column order of "qkv" is (q_1..q_s, k_1..k_s, v_1..v_s).
    """
    b = params["blocks"]
    L, D = b["attn"]["w_out"].shape[0], b["attn"]["w_out"].shape[-1]
    resid, head, mid, mlp = (jnp.asarray(idx[k]) for k in ("resid", "head", "mid", "mlp"))
    s = head.shape[-1]
    qkv_cols = jnp.concatenate([head, head + D, head + 2 * D], axis=-1)  # [L, 3s]
    connector = jnp.concatenate([jnp.eye(s), jnp.ones((2 * s, s))], axis=0)
    return {
        "qkv": _take(b["attn"]["w_qkv"], resid[:-1], qkv_cols),
        "connector": jnp.broadcast_to(connector, (L, 3 * s, s)).astype(b["attn"]["w_out"].dtype),
        "attn_out": _take(b["attn"]["w_out"], head, mid),
        "mlp_in": _take(b["mlp"]["w_in"], mid, mlp),
        "mlp_out": _take(b["mlp"]["w_out"], mlp, resid[1:]),
    }


KINDS = ("qkv", "connector", "attn_out", "mlp_in", "mlp_out")
WEIGHT_KINDS = ("qkv", "attn_out", "mlp_in", "mlp_out")  # real weights (connector excluded)


def to_distance(w):
    """d = 1/|w|, +inf where w == 0 (no edge)."""
    a = jnp.abs(w)
    return jnp.where(a > 0, 1.0 / jnp.where(a > 0, a, 1.0), jnp.inf)


def direct_distances(params: dict, idx: dict) -> jax.Array:
    """[N_src, O]: every source node's out-edge distances (rows padded with +inf to O columns).

    Rows: per block, A_l (s), Q_l (3s), C_l (s), M_l (s), H_l (h); N_src = L (6s + h), O = max(3s, h).
    Only row contents matter to the box-growing analysis, not node identities.
    """
    blocks = edge_blocks(params, idx)
    O = max(blocks[k].shape[-1] for k in KINDS)
    rows = []
    for kind in KINDS:
        d = to_distance(blocks[kind])
        d = d.reshape(-1, d.shape[-1])
        rows.append(jnp.pad(d, ((0, 0), (0, O - d.shape[-1])), constant_values=jnp.inf))
    return jnp.concatenate(rows, axis=0)


def adjacency(params: dict, idx: dict) -> jax.Array:
    """[N, N] dense weight matrix (0 = no edge), N = L (6s + h) + s, nodes in block order."""
    blocks = edge_blocks(params, idx)
    L, s, _ = blocks["qkv"].shape
    h = blocks["mlp_in"].shape[-1]
    per = 6 * s + h
    N = L * per + s
    W = jnp.zeros((N, N), blocks["qkv"].dtype)
    # (kind, source offset, target offset) within one block; the mlp_out target is the next block's A.
    layout = (("qkv", 0, s), ("connector", s, 4 * s), ("attn_out", 4 * s, 5 * s),
              ("mlp_in", 5 * s, 6 * s), ("mlp_out", 6 * s, per))
    for l in range(L):
        base = l * per
        for kind, src, dst in layout:
            W = jax.lax.dynamic_update_slice(W, blocks[kind][l], (base + src, base + dst))
    return W


def all_pairs_shortest(dist_NN: jax.Array) -> jax.Array:
    """Floyd-Warshall (min-plus) shortest-path lengths; the diagonal (self) is set to +inf."""
    N = dist_NN.shape[0]
    d = jnp.where(jnp.eye(N, dtype=bool), 0.0, dist_NN)
    relax = lambda k, d: jnp.minimum(d, jax.lax.dynamic_slice_in_dim(d, k, 1, axis=1)
                                     + jax.lax.dynamic_slice_in_dim(d, k, 1, axis=0))
    d = jax.lax.fori_loop(0, N, relax, d)
    return jnp.where(jnp.eye(N, dtype=bool), jnp.inf, d)


def shortest_path_distances(params: dict, idx: dict) -> jax.Array:
    """[N, N]: every node's shortest-path distance to every other node (+inf if unreachable).

    The paper's text describes shortest-path distances; the authors' code uses direct edges.
    """
    return all_pairs_shortest(to_distance(adjacency(params, idx)))


def network_distances(params: dict, idx: dict, variant: str = "direct") -> jax.Array:
    """The distances the analysis reads: `direct_distances` or `shortest_path_distances`."""
    if variant == "direct":
        return direct_distances(params, idx)
    if variant == "shortest_path":
        return shortest_path_distances(params, idx)
    raise OntogenyError(f"unknown network variant {variant!r}; choose direct or shortest_path")
