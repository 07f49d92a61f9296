"""The crosscoders study's figures and its top-features text (numbers from
`probes.crosscoders.metrics`)."""
from __future__ import annotations

import numpy as np

from experiments.plots import plt, save


def top_features_markdown(attr_CF, emerge_step, order, f_NF, tokens_BS, decode, step: int, n_features: int,
                          n_contexts: int) -> str:
    """The `n_features` features of highest attribution at the last snapshot, each with its
    emergence step, best n-gram order, firing rate and its top contexts (30 characters before
    the token, the token in brackets); f_NF are the last snapshot's latents over tokens_BS."""
    S = tokens_BS.shape[1]
    lines = [f"# Top features by attribution to the induction metric (snapshot step {step})\n"]
    for i in np.argsort(-attr_CF[-1])[:n_features]:
        lines.append(f"## feature {i}: attr {attr_CF[-1, i]:.4f}, emerges at step {emerge_step[i]}, "
                     f"best n-gram order {order[i]}, fires on {np.mean(f_NF[:, i] > 0):.3%} of tokens")
        for n in np.argsort(-f_NF[:, i])[:n_contexts]:
            if f_NF[n, i] <= 0:
                break
            b, s = divmod(int(n), S)
            before = decode(tokens_BS[b, max(0, s - 30): s])
            lines.append(f"    {f_NF[n, i]:7.2f}  {before!r} [{decode(tokens_BS[b, s:s + 1])!r}]")
        lines.append("")
    return "\n".join(lines)


def draw(folder, steps, norms, emerge_idx, alive, cos, ce, drop_top, drop_rand, order, usable, init_feature,
         similarity, token_r2, norm_histogram=None) -> None:
    """Decoder norms by emergence, the emergence histogram (with `norm_histogram`, the decoder
    norm's half-max reading of the same dictionary, outlined) beside CE, KL, the snapshots' CKA
    to the first and the current token's share of their variance, decoder-direction turns,
    ablation drops and complexity against emergence (arrays as `probes.crosscoders.metrics` and
    `.emergence` return them: [F, C] norms, [F] per feature, [C] per snapshot)."""
    rel = norms[alive] / norms[alive].max(1, keepdims=True)
    sort = np.lexsort((-rel[:, -1], emerge_idx[alive]))
    fig, ax = plt.subplots(figsize=(7, 5))
    im = ax.imshow(rel[sort], aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=7)
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("feature (sorted by emergence)")
    ax.set_title("decoder norm / max norm")
    fig.colorbar(im)
    save(fig, folder.figure("decoder_norms"))

    fig, axes = plt.subplots(4, 1, figsize=(7, 10), sharex=True)
    counts = np.bincount(emerge_idx[alive & ~init_feature], minlength=len(steps))
    axes[0].bar(range(len(steps)), counts)
    axes[0].bar(0, int(init_feature.sum()), color="tab:red", label="init features")
    if norm_histogram is not None:
        axes[0].step(range(len(steps)), norm_histogram, where="mid", color="black", lw=1.2,
                     label="decoder norm, half its max")
    axes[0].set_ylabel("features emerging")
    axes[0].legend()
    axes[1].plot(range(len(steps)), ce["clean"], "o-", label="val CE")
    axes[1].set_ylabel("nats")
    axes[1].legend()
    axes[2].plot(range(len(steps)), ce["kl_unigram"], "o-", label="KL(model || unigram)")
    axes[2].plot(range(len(steps)), ce["kl_bigram"], "o-", label="KL(model || bigram)")
    axes[2].set_ylabel("nats")
    axes[2].legend()
    axes[3].plot(range(len(steps)), similarity, "o-", label="linear CKA to the first snapshot")
    axes[3].plot(range(len(steps)), token_r2, "o-", label="variance explained by the current token")
    axes[3].set_ylim(0, 1.05)
    axes[3].legend()
    axes[3].set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=7)
    axes[3].set_xlabel("checkpoint step")
    save(fig, folder.figure("emergence"))

    fig, ax = plt.subplots(figsize=(7, 4))
    q = np.percentile(cos[alive], [10, 50, 90], axis=0)
    ax.plot(range(1, len(steps)), q[1], "o-", label="median")
    ax.fill_between(range(1, len(steps)), q[0], q[2], alpha=0.3, label="10-90%")
    ax.set_xticks(range(1, len(steps)), [str(s) for s in steps[1:]], rotation=90, fontsize=7)
    ax.set_ylabel("cos(decoder_t, decoder_t-1)")
    ax.legend()
    save(fig, folder.figure("decoder_cosines"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(steps, drop_top, "o-", label="top features ablated")
    axes[0].plot(steps, drop_rand, "o-", label="random features ablated")
    axes[0].set_xscale("symlog", linthresh=10)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("induction log-prob drop")
    axes[0].legend()
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, usable.sum())
    axes[1].scatter(emerge_idx[usable], order[usable] + jitter, s=6)
    axes[1].set_xlabel("emergence snapshot index")
    axes[1].set_ylabel("best n-gram order")
    save(fig, folder.figure("ablation_complexity"))


def draw_planted(folder, truth: dict, rec: dict, norms, emerge_idx, alive) -> None:
    """The planted check: each planted feature's matched decoder norms (relative to their max,
    rows by group, the true onset marked), estimated against true onset, and the emergence
    histogram of every alive feature beside the planted onsets'."""
    C = norms.shape[1]
    rel = norms[rec["match"]] / np.maximum(norms[rec["match"]].max(1, keepdims=True), 1e-12)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    axes[0].imshow(rel, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    axes[0].scatter(truth["onset"] - 0.5, np.arange(len(rel)), marker="|", color="red", s=40, label="true onset")
    bounds = [i for i in range(1, len(rel)) if truth["group"][i] != truth["group"][i - 1]]
    for b in bounds:
        axes[0].axhline(b - 0.5, color="white", lw=0.8)
    axes[0].set_yticks([np.mean(np.flatnonzero(truth["group"] == g)) for g in dict.fromkeys(truth["group"])],
                       list(dict.fromkeys(truth["group"])))
    axes[0].set_xlabel("snapshot")
    axes[0].set_title("matched decoder norm / max")
    axes[0].legend(loc="lower right", fontsize=7)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, (2, len(rel)))
    ok = rec["recovered"]
    axes[1].fill_between([-0.5, C - 0.5], [-1.5, C - 1.5], [0.5, C + 0.5], color="tab:green", alpha=0.15,
                         label="within one snapshot")
    axes[1].scatter(truth["onset"][ok] + jitter[0, ok], rec["estimate"][ok] + jitter[1, ok], s=12, label="recovered")
    axes[1].scatter(truth["onset"][~ok] + jitter[0, ~ok], rec["estimate"][~ok] + jitter[1, ~ok], s=12, marker="x",
                    color="grey", label="not recovered")
    axes[1].set_xlim(-0.5, C - 0.5)
    axes[1].set_ylim(-0.5, C - 0.5)
    axes[1].set_xlabel("true onset (snapshot)")
    axes[1].set_ylabel("estimated emergence (snapshot)")
    axes[1].legend(fontsize=7)
    width = 0.4
    axes[2].bar(np.arange(C) - width / 2, np.bincount(emerge_idx[alive], minlength=C), width, label="alive features")
    axes[2].bar(np.arange(C) + width / 2, np.bincount(truth["onset"], minlength=C), width, label="planted features")
    axes[2].set_xlabel("emergence snapshot")
    axes[2].legend(fontsize=7)
    save(fig, folder.figure("planted"))
