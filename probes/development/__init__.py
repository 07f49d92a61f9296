"""Training-dynamics measures, each written for ONE checkpoint of any family and lifted over a
series with `dynamics.checkpoints.map_stack`:

- `estimate_llc` / `sgld_chains` (llc.py): the local learning coefficient by SGLD chains
  (Lau et al. 2023), the chains a vmapped axis of their own;
- `cka.cka` (cka.py): linear and debiased CKA (Kornblith et al. 2019; Song et al. 2012);
- `head_scores` (heads.py): previous-token and induction scores of every head, the in-context
  learning score (Olsson et al. 2022);
- `lens_nll` (lens.py): the logit lens of every layer (nostalgebraist 2020);
- `weight_stats` (weights.py): Frobenius norm, stable rank and singular values of every matrix;
- series.py: the one-checkpoint function of the development study and what is read off a series
  (CKA maps with jackknife intervals, fastest change, supported turns).

    steps, stack = load_stack(run); config = load_model_config(run)
    tokens = repeated_random_tokens(jax.random.PRNGKey(0), 32, 32, config.vocab_size)
    scores = map_stack(lambda p, t: head_scores(p, config, t), stack, tokens)   # leaves [C, B, L, H]
"""
from probes.development.heads import head_scores, repeated_random_tokens
from probes.development.lens import lens_nll
from probes.development.llc import SGLDConfig, estimate_llc, next_token_loss, sgld_chains
from probes.development.weights import weight_stats

__all__ = ["head_scores", "repeated_random_tokens", "lens_nll", "SGLDConfig", "estimate_llc",
           "next_token_loss", "sgld_chains", "weight_stats"]
