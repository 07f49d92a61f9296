"""NeuroMFA (Xiao et al. 2025): multifractal analysis of a GPT's neuron-interaction network.

One place for the method, each piece written for one checkpoint and lifted over checkpoints
(and network samples) by `jax.vmap`:

- `network`: the sampled neurons and the network of one checkpoint (edges from attention
  in/out and MLP in/out, distance 1/|w|; direct edges or shortest paths).
- `spectrum`: box growing, tau(q), f(alpha), alpha0 and width, the degree of emergence E(t),
  the whole series (`series_spectra`), and the Gaussian control (`gaussian_like`).
- `measures`: downstream scores (val loss, next-word accuracy), the baselines (mean |w|,
  weighted degree) with Spearman and partial correlations, bootstrap intervals, and the
  headline numbers of a study over several model sizes.

Axis letters: C checkpoints, M network samples, L layers, N nodes, O out-edge slots of a node,
Q moment orders q, R radii (the box-growing grid), B bootstrap resamples.
"""
