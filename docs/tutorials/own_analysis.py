"""Your own analysis over a checkpoint series, in a few dozen lines.

    python docs/tutorials/own_analysis.py [RUN] [--text FILE] [--out DIR]

For every checkpoint of RUN (trained here or imported; any family): the next-token loss on a
text, and how similar each layer's residual stream already is to the final checkpoint's
(linear CKA, Kornblith et al. 2019). The measure is written for ONE checkpoint; `map_stack`
runs it over all of them, vmapped, in memory-bounded chunks streamed from disk.
Without RUN, a micro pretrain run (seconds on a CPU) is trained into DIR/micro first.
"""
import argparse
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

import models
from dynamics.checkpoints import load_model_config, load_stack, map_stack, open_stack
from dynamics.run_tokenizer import load_tokenizer
from experiments.studies.run_inputs import own_corpus


def linear_cka(X_ND, Y_ND):
    """Linear CKA of two representations of the same N inputs (1 = the same up to rotation and scale)."""
    X, Y = X_ND - X_ND.mean(0), Y_ND - Y_ND.mean(0)
    return jnp.sum((Y.T @ X) ** 2) / (jnp.linalg.norm(X.T @ X) * jnp.linalg.norm(Y.T @ Y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a run folder (default: train a micro run into OUT/micro)")
    parser.add_argument("--text", help="text to score (default: the run's own held-out text)")
    parser.add_argument("--out", default="runs/tutorial-own-analysis")
    args = parser.parse_args(argv)
    run = args.run or str(Path(args.out) / "micro")
    if not args.run:  # the same command you would type; it resumes if the run exists
        subprocess.run([sys.executable, "-m", "experiments", "pretrain", "--preset", "micro", "--out", run], check=True)

    config = load_model_config(run)                 # any family: the run's model.json
    tokenizer = load_tokenizer(run)
    text = Path(args.text).read_text() if args.text else own_corpus(run).val_text
    S = min(config.context, 32)
    ids = tokenizer.encode(text)[: 16 * S]
    tokens_BS = ids[: len(ids) // S * S].reshape(-1, S)

    def residuals(params, tokens_BS):               # written for one checkpoint: [L, B*S, D]
        _, captured = models.apply(params, tokens_BS, config, capture=("resid",))
        resid_LBSD = captured["resid"]
        return resid_LBSD.reshape(resid_LBSD.shape[0], -1, resid_LBSD.shape[-1])

    def measures(params, tokens_BS, final_LND):     # also one checkpoint
        logits_BSV, captured = models.apply(params, tokens_BS, config, capture=("resid",))
        logp_BSV = jax.nn.log_softmax(logits_BSV[:, :-1], -1)
        loss = -jnp.take_along_axis(logp_BSV, tokens_BS[:, 1:, None], -1).mean()
        resid_LND = captured["resid"].reshape(final_LND.shape)
        return {"loss": loss, "cka_L": jax.vmap(linear_cka)(resid_LND, final_LND)}

    steps, stack = open_stack(run)                  # the series stays on disk
    _, last = load_stack(run, steps=[int(steps[-1])])
    final_LND = map_stack(residuals, last, tokens_BS)[0]
    out = map_stack(measures, stack, tokens_BS, final_LND)   # every leaf gains a leading axis C

    print(f"{run}: {len(steps)} checkpoints, {tokens_BS.size} tokens")
    print("step      loss   CKA to the final checkpoint, layer 0..L-1")
    for step, loss, cka_L in zip(steps, out["loss"], out["cka_L"]):
        print(f"{int(step):>6}  {loss:8.3f}   " + "  ".join(f"{c:.2f}" for c in cka_L))
    return steps, out


if __name__ == "__main__":
    main()
