"""`bench quality` and `bench sampling`: time to a validation loss beside nanoGPT's CPU
recipe in PyTorch, and generation speed beside PyTorch's KV-less `generate` and the matmul bound.

Both need torch for their reference (the `torch` extra); `quality` is skipped without it,
`sampling` then reports Ontogeny's figures alone. No test depends on either.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from dynamics import data as data_lib
from dynamics import stats

# nanoGPT README's CPU run: config/train_shakespeare_char.py with --block_size=64 --batch_size=12
# --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
RECIPE = {"n_layer": 4, "n_head": 4, "d_model": 128, "context": 64, "batch_size": 12, "iters": 2000,
          "lr": 1e-3, "min_lr": 1e-4, "warmup": 100, "weight_decay": 0.1, "grad_clip": 1.0}
QUICK_ITERS = 200  # --quick: both recipes cut to this many steps (a check of the plumbing, not a figure)


def nanogpt_lr(it: int, r: dict) -> float:
    """nanoGPT train.py's get_lr: linear warmup (it+1)/(warmup+1), cosine to min_lr at `iters`."""
    if it < r["warmup"]:
        return r["lr"] * (it + 1) / (r["warmup"] + 1)
    ratio = min(1.0, (it - r["warmup"]) / max(r["iters"] - r["warmup"], 1))
    return r["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (r["lr"] - r["min_lr"])


def torch_logits(model, idx):
    """All-position logits [B, S, V] of bench_torch's nanoGPT module (its forward returns the loss)."""
    import torch

    x = model.drop(model.wte(idx) + model.wpe(torch.arange(idx.shape[1])))
    for block in model.h:
        x = block(x)
    return model.lm_head(model.ln_f(x))


def torch_window_loss(model):
    """(inputs [B, S], targets [B, S]) numpy -> each window's mean loss [B], for `full_split_losses`."""
    import torch
    from torch.nn import functional as F

    def fn(x_BS, y_BS):
        with torch.no_grad():
            logits = torch_logits(model, torch.from_numpy(np.asarray(x_BS, np.int64)))
            nll = F.cross_entropy(logits.transpose(1, 2), torch.from_numpy(np.asarray(y_BS, np.int64)), reduction="none")
        return nll.mean(1).numpy()
    return fn


def faster_torch_threads(step, probe_steps: int = 10) -> int:
    """[choice] torch's default thread count or 1, whichever runs `probe_steps` steps faster here:
    on a shared, oversubscribed CPU OpenMP's spinning made 2 threads up to 10x slower than 1."""
    import torch

    default, best = torch.get_num_threads(), None
    for threads in sorted({default, 1}):
        torch.set_num_threads(threads)
        step()
        t0 = time.perf_counter()
        for _ in range(probe_steps):
            step()
        elapsed = time.perf_counter() - t0
        best = min(best or (elapsed, threads), (elapsed, threads))
    return best[1]


def train_nanogpt(train_ids, vocab: int, r: dict) -> tuple[object, float, int]:
    """nanoGPT's recipe `r` in PyTorch eager on our training split (batches from data.get_batch,
    seed 0): AdamW betas (0.9, 0.99), decay on every >= 2-D weight, clip 1.0, its lr schedule.
    Returns (model, seconds of the training loop, torch threads used)."""
    import torch

    from experiments.bench import torch_reference as bench_torch

    model = bench_torch.build(r["n_layer"], r["n_head"], r["d_model"], r["context"], vocab, 0.0)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": r["weight_decay"]},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=r["lr"], betas=(0.9, 0.99))

    def step(it, update=True):
        x, y = data_lib.get_batch(train_ids, 0, it, r["batch_size"], r["context"])
        loss = model(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        if update:
            for group in opt.param_groups:
                group["lr"] = nanogpt_lr(it, r)
            opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    threads = faster_torch_threads(lambda: step(0, update=False))  # no update: the recipe starts untouched
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for it in range(r["iters"]):
        step(it)
    seconds = time.perf_counter() - t0
    model.eval()
    return model, seconds, threads


def step_seconds(metrics: list[dict], tokens_per_step: int) -> dict[int, float]:
    """Wall seconds of training up to each logged step, from metrics.jsonl's tokens_per_s rows
    (each covers the steps since the previous row: compile, evaluations and saves included)."""
    rows = sorted((r["step"], r["tokens_per_s"]) for r in metrics
                  if r.get("stage") == "pretrain" and r.get("tokens_per_s"))
    out, prev, total = {}, 0, 0.0
    for step, tps in rows:
        total += tokens_per_step * (step - prev) / tps
        out[step], prev = total, step
    return out


def first_checkpoint_at_or_below(losses_at, steps: list[int], target: float):
    """The first of `steps` whose full-split loss <= target, by bisection over the checkpoints
    [choice: the loss is taken as non-increasing from checkpoint to checkpoint; every checkpoint
    evaluated is returned so a violation shows]. Returns (step or None, {step: loss})."""
    seen = {}

    def loss(s):
        if s not in seen:
            seen[s] = losses_at(s)
        return seen[s]

    if loss(steps[-1]) > target:
        return None, seen
    lo, hi = 0, len(steps) - 1  # steps[hi] reaches the target; find the first such
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if loss(steps[mid]) <= target else (mid + 1, hi)
    return steps[hi], seen


def quality(quick: bool = False) -> dict:
    """nanoGPT's CPU recipe in PyTorch, scored on the whole held-out split, against the wall time
    `pretrain --preset tiny` (the CLI's defaults, in a subprocess) takes to reach that loss."""
    from experiments.bench import torch_reference as bench_torch
    from experiments.studies.pretrain import study as pretrain
    from dynamics.checkpoints import Series, load_model_config

    if not bench_torch.available():
        print("quality: skipped (torch is not importable; pip install -e '.[torch]')", flush=True)
        return {"quality_measured": False}
    r = {**RECIPE, "iters": QUICK_ITERS if quick else RECIPE["iters"]}
    corpus = data_lib.load_corpus(pretrain.PRESETS["tiny"].data)
    train_ids, val_ids = corpus.train_ids, corpus.val_ids
    model, torch_s, threads = train_nanogpt(train_ids, corpus.tokenizer.vocab_size, r)
    torch_losses = pretrain.full_split_losses(torch_window_loss(model), r["context"], val_ids)
    target = float(torch_losses.mean())
    print(f"quality: nanoGPT CPU recipe ({r['iters']} iters, batch {r['batch_size']}, torch {threads} threads) "
          f"{torch_s:.1f} s, whole-split val loss {target:.4f} over {torch_losses.size * r['context']:,} tokens",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "tiny")
        sets = ["--set", f"train.steps={QUICK_ITERS}", "--set", "train.eval_every=100"] if quick else []
        proc = subprocess.run([sys.executable, "-m", "experiments", "pretrain", "--preset", "tiny", "--out", run,
                               *sets], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pretrain --preset tiny failed: {proc.stderr.strip()[-500:]}")
        summary = json.loads(open(os.path.join(run, "summary.json")).read())
        cfg, series = load_model_config(run), Series(run, "pretrain", create=False)
        tokens_per_step = pretrain.PRESETS["tiny"].train.batch_size * cfg.context
        fn = pretrain.window_loss_fn(cfg)

        def at(step):
            params = series.restore_params(step)
            return float(pretrain.full_split_losses(lambda x, y: fn(params, x, y), cfg.context, val_ids).mean())
        steps = [s for s in series.steps() if s > 0]
        step, seen = first_checkpoint_at_or_below(at, steps, target)
        seconds = step_seconds([json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))], tokens_per_step)
    reached = seconds.get(step) if step is not None else None
    out = {"quality_measured": True, "quality_recipe_iters": r["iters"], "quality_torch_threads": threads,
           "quality_torch_train_s": torch_s, "quality_torch_val_loss_full": target,
           "quality_torch_val_loss_full_ci": stats.mean_ci(torch_losses),
           "quality_val_tokens_full": int(torch_losses.size * r["context"]),
           "quality_ontogeny_val_loss_full": summary["val_loss_full"], "quality_ontogeny_steps": summary["steps"],
           "quality_ontogeny_train_s": max(seconds.values()), "quality_ontogeny_train_devices": summary["train_devices"],
           "quality_ontogeny_step_to_target": step, "quality_ontogeny_s_to_target": reached,
           "quality_checkpoint_losses": {str(k): v for k, v in sorted(seen.items())},
           "quality_time_ratio": reached / torch_s if reached else None}
    print(f"quality: pretrain --preset tiny ({summary['train_devices']} device(s)) reaches {target:.4f} at step "
          f"{step} after {reached if reached is None else round(reached, 1)} s (whole-split loss of its checkpoints, "
          f"bisected); its final {summary['val_loss_full']:.4f} after {out['quality_ontogeny_train_s']:.1f} s; "
          f"time ratio ontogeny/torch {out['quality_time_ratio'] if reached is None else round(reached / torch_s, 2)}",
          flush=True)
    return out


def decode_flops_per_token(cfg, positions: float) -> float:
    """Forward FLOPs of one cached decoding step: 2 x matmul params (blocks and head) + 4 L D x
    positions for QK^T and AV against the cache."""
    L, D, F, V = cfg.n_layer, cfg.d_model, cfg.d_mlp, cfg.vocab_size
    return 2 * (L * (3 * D * D + D * D + 2 * D * F) + D * V) + 4 * L * D * positions


def torch_generate(model, idx, n_new: int, context: int, temperature: float = 1.0):
    """nanoGPT's `GPT.generate`: no KV cache, each new token runs the (cropped) sequence through
    the model; softmax sample of the last position (nanoGPT's forward computes only that head row)."""
    import torch
    from torch.nn import functional as F

    with torch.no_grad():
        for _ in range(n_new):
            cond = idx if idx.size(1) <= context else idx[:, -context:]
            x = model.drop(model.wte(cond) + model.wpe(torch.arange(cond.shape[1])))
            for block in model.h:
                x = block(x)
            logits = model.lm_head(model.ln_f(x[:, [-1], :]))[:, -1, :] / temperature
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
    return idx


def sampling(quick: bool = False, batch: int = 16) -> dict:
    """chars/s of `models.sample.generate` (KV cache) and `generate_any` (no cache), beside
    nanoGPT's KV-less `generate` in PyTorch (when importable; the faster of its default thread
    count and 1) and the matmul bound (decode FLOPs per token / this run's matmul peak).
    [choice] The tiny shape, random weights, batch 16, a 1-token prompt and 63 new tokens
    (one context; `generate_any` refuses to slide), temperature 1."""
    from experiments.bench import timing
    from experiments.bench import torch_reference as bench_torch
    from models import gpt, sample

    cfg = timing.comparison_shapes()["tiny"]
    n_new, prompt = cfg.context - 1, np.zeros((batch, 1), np.int32)
    params = gpt.init_params(cfg, jax.random.PRNGKey(0))
    key, chars = jax.random.PRNGKey(1), batch * n_new
    out = {"sample_batch": batch, "sample_new_tokens": n_new}
    out["sample_chars_per_s_cached"] = chars / timing.timeit(lambda: sample.generate(params, cfg, prompt, n_new, key))
    out["sample_chars_per_s_any"] = chars / timing.timeit(lambda: sample.generate_any(params, cfg, prompt, n_new, key))
    peak = timing.matmul_peak_gflops()
    out["sample_matmul_bound_chars_per_s"] = peak * 1e9 / decode_flops_per_token(cfg, (n_new + 1) / 2)
    line = (f"sampling (tiny, batch {batch}, {n_new} new): cached {out['sample_chars_per_s_cached']:,.0f} chars/s, "
            f"generate_any {out['sample_chars_per_s_any']:,.0f}, matmul bound "
            f"{out['sample_matmul_bound_chars_per_s']:,.0f} (peak {peak:.0f} GFLOP/s)")
    if bench_torch.available():
        import torch

        model = bench_torch.build(cfg.n_layer, cfg.n_head, cfg.d_model, cfg.context, cfg.vocab_size, 0.0).eval()
        idx, default, best = torch.zeros((batch, 1), dtype=torch.long), torch.get_num_threads(), 0.0
        for threads in sorted({default, 1}):
            torch.set_num_threads(threads)
            torch_generate(model, idx, 4, cfg.context)
            t0 = time.perf_counter()
            torch_generate(model, idx, n_new, cfg.context)
            best = max(best, chars / (time.perf_counter() - t0))
        torch.set_num_threads(default)
        out["torch_sample_chars_per_s_kvless"] = best
        out["sample_cached_over_torch"] = out["sample_chars_per_s_cached"] / best
        line += f", PyTorch nanoGPT generate (no cache) {best:,.0f} ({out['sample_cached_over_torch']:.1f}x cached/torch)"
    print(line, flush=True)
    return out
