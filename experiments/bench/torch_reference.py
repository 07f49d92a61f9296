"""Optional PyTorch reference for `bench torch`: nanoGPT's model and AdamW loop, fp32, eager.

Only imported when torch is importable (the `torch` extra); no test needs it. The model follows
nanoGPT's model.py: pre-LN blocks, causal self-attention through
`F.scaled_dot_product_attention` (nanoGPT's "flash" path), GELU MLP 4x, LayerNorm with bias,
tied token embedding / head, N(0, 0.02) init with the residual projections scaled by
1/sqrt(2L). The optimizer is nanoGPT's `configure_optimizers`: AdamW with weight decay on every
parameter of dim >= 2 (embeddings included), none on biases and norms; then nanoGPT's train.py
step: forward with targets, backward, clip the gradient norm to 1.0, step, zero_grad.
[choice] betas (0.9, 0.99) and lr 1e-3 as nanoGPT's shakespeare_char config; no warmup needed
for a throughput measurement. Exact (erf) GELU as nanoGPT's `nn.GELU()`; Ontogeny's tanh GELU
costs about the same.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def build(n_layer: int, n_head: int, d_model: int, context: int, vocab: int, dropout: float = 0.0, seed: int = 0):
    """nanoGPT's GPT as a torch module (built inside so that importing this file needs no torch)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn, self.c_proj = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
            self.resid_dropout = nn.Dropout(dropout)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(d_model, dim=2)
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout if self.training else 0.0, is_causal=True)
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d_model), Attention(), nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model),
                                     nn.Dropout(dropout))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, d_model), nn.Embedding(context, d_model)
            self.drop, self.h = nn.Dropout(dropout), nn.ModuleList([Block() for _ in range(n_layer)])
            self.ln_f, self.lm_head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab, bias=False)
            self.wte.weight = self.lm_head.weight  # tied, as nanoGPT
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("c_proj.weight", "2.weight")) else 0.02
                    nn.init.normal_(p, 0.0, std)
                else:
                    nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)

        def forward(self, idx, targets):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.drop(self.wte(idx) + self.wpe(pos))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    torch.manual_seed(seed)
    return GPT()


def make_step(n_layer: int, n_head: int, d_model: int, context: int, vocab: int, batch_size: int,
              dropout: float = 0.0, lr: float = 1e-3, weight_decay: float = 0.1, grad_clip: float = 1.0):
    """A closure running one nanoGPT training step on a fixed random batch; returns the loss tensor."""
    import torch

    model = build(n_layer, n_head, d_model, context, vocab, dropout)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, vocab, (batch_size, context + 1)).astype(np.int64))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def step():
        loss = model(inputs, targets)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


# ----- side by side with Ontogeny's train step (the `bench core` / `bench torch` training figures) -----

# [choice] The comparison shapes: nanoGPT's CPU recipe (batch 12) and shakespeare-char at batch 8.
SHAPES = {"tiny": 12, "shakespeare-char": 8}


def cpu_info(text: str | None = None) -> dict:
    """CPU model and widest vector ISA from /proc/cpuinfo (or `text`); "unknown" elsewhere."""
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    isa = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "unknown")
    return {"cpu_model": fields.get("model name", "unknown"), "cpu_isa": isa}


def minor_faults_per_call(fn, calls: int = 2) -> float | None:
    """Page faults (minor: the kernel handing out fresh zeroed pages) per call of `fn`, from
    getrusage; None where the platform has no `resource` module. See `experiments.cli.allocator`."""
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def interleaved(fns: dict, steps: int, windows: int = 3, warm: int = 1) -> dict:
    """Seconds per call of each fn, timed in alternating windows of `steps` calls so that the
    machine's noise hits every contender; a warm-up call first. Returns {name: [s per window]}.

    [choice] Each window starts with `warm` untimed calls: resuming after the other contender's
    window costs a one-off (the first shakespeare-char XLA step after 1 s idle took ~150 ms longer
    than the next: docs/benchmarks/2026-11-30-xeon.md), which a training loop that never pauses
    does not pay."""
    for fn in fns.values():
        fn()
    out = {name: [] for name in fns}
    for _ in range(windows):
        for name, fn in fns.items():
            for _ in range(warm):
                fn()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            out[name].append((time.perf_counter() - t0) / steps)
    return out


def ontogeny_step(model_config, batch_size: int, mesh=None, faster: bool = False):
    """Ontogeny's jitted train step with the CLI's default optimizer settings on a fixed batch
    (waits for the result, as the torch step does); data parallel over `mesh` when given.
    The step's layer norms and GELUs use their recomputing backward (the default of
    `train.make_train_step`). `faster`: AdamW over one flat buffer too (`train.flat_adamw`)."""
    import jax
    from dynamics import sharding
    from dynamics import train as train_lib
    from models import gpt

    tc = train_lib.TrainConfig(steps=1000, batch_size=batch_size)
    optimizer = train_lib.flat_adamw(tc) if faster else train_lib.scheduled_adamw(tc)
    state = [train_lib.init_state(gpt.init_params(model_config, jax.random.PRNGKey(0)), optimizer, 0)]
    step = train_lib.make_train_step(train_lib.lm_loss(model_config), optimizer, dropout=model_config.dropout > 0)
    x = np.random.default_rng(0).integers(0, model_config.vocab_size, (batch_size, model_config.context + 1))
    batch = {"inputs": x[:, :-1].astype(np.int32), "targets": x[:, 1:].astype(np.int32)}
    if mesh is not None:
        state[0], batch = sharding.replicate(state[0], mesh), sharding.shard_batch(batch, mesh)

    def run():
        state[0], metrics = step(state[0], batch)
        return float(metrics["loss"])
    return run


def serve() -> None:
    """The child side of `torch_contenders`: builds nanoGPT's step from the first stdin line (the
    `make_step` arguments as JSON), replies with torch's version and default thread count (JSON),
    then runs one step for each further line (a thread count; 0 for the default) and replies with
    its loss."""
    import json
    import sys

    import torch

    step = make_step(**json.loads(sys.stdin.readline()))
    default = torch.get_num_threads()
    print(json.dumps({"torch_version": torch.__version__, "torch_threads": default}), flush=True)
    for line in sys.stdin:
        torch.set_num_threads(int(line) or default)
        loss = float(step().detach())
        torch.set_num_threads(default)
        print(loss, flush=True)


def torch_contenders(cfg, batch: int):
    """({name: run one nanoGPT step}, close, {torch_version, torch_threads}): steps at torch's
    default thread count and, where that is above 1, at 1 thread (on a shared, oversubscribed CPU,
    OpenMP's spinning barriers made 2 threads ~10x slower than 1).

    [choice] The steps run in a child process (`serve`), one pipe round trip each (~0.1 ms against
    a 25 ms step), so neither runtime shares a process with the other: in one process, the
    shakespeare-char XLA step took 1065-1248 ms beside torch against 765-811 ms without it
    (docs/benchmarks/2026-11-30-xeon.md), which no user meets.
    The child inherits this process's environment, huge pages included."""
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", "from experiments.bench import torch_reference as bench_torch; bench_torch.serve()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    spec = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model, context=cfg.context,
                vocab=cfg.vocab_size, batch_size=batch, dropout=cfg.dropout)
    child.stdin.write(json.dumps(spec) + "\n")
    child.stdin.flush()
    reply = child.stdout.readline()
    if not reply:
        raise RuntimeError(f"the torch child process did not start (exit code {child.wait()})")
    info = json.loads(reply)

    def at(threads):
        def run():
            child.stdin.write(f"{threads}\n")
            child.stdin.flush()
            return float(child.stdout.readline())
        return run

    def close():
        child.stdin.close()
        child.wait(timeout=60)
    return {"torch": at(0), **({"torch_1_thread": at(1)} if info["torch_threads"] > 1 else {})}, close, info


def side_by_side(shapes: dict, flops_per_token, peak_gflops: float, steps: dict, windows: int = 3) -> dict:
    """tokens/s of Ontogeny's step and (when torch is importable) nanoGPT's, interleaved, per shape.

    `shapes` maps a name to (GPTConfig, batch size); `flops_per_token(config)` gives the training
    FLOPs a token for MFU against `peak_gflops`. Keys as in `bench core`'s JSON."""
    import jax

    from dynamics import sharding

    have_torch = available()
    results = {**cpu_info(), "torch_measured": have_torch,
               "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    for name, (cfg, batch) in shapes.items():
        key, tokens = name.replace("-", "_"), batch * cfg.context
        fns = {"ontogeny": ontogeny_step(cfg, batch), "ontogeny_faster": ontogeny_step(cfg, batch, faster=True)}
        if len(jax.devices()) >= 2 and batch % 2 == 0:  # e.g. ONTOGENY_HOST_DEVICES=2: the 2-device step too
            fns["ontogeny_2dev"] = ontogeny_step(cfg, batch, sharding.data_mesh(jax.devices()[:2]))
        close = lambda: None
        if have_torch:
            contenders, close, info = torch_contenders(cfg, batch)
            fns.update(contenders)
            results.update(info)
        try:
            times = interleaved(fns, steps[name], windows)
        finally:
            close()
        if "torch_1_thread" in times:  # [choice] the reference is the faster of torch's two thread settings
            slower = max(("torch", "torch_1_thread"), key=lambda k: np.median(times[k]))
            results[f"torch_threads_{key}"] = 1 if slower == "torch" else results["torch_threads"]
            times["torch"] = times.pop("torch_1_thread") if slower == "torch" else times["torch"]
            times.pop("torch_1_thread", None)
        for who, ts in times.items():
            tps = sorted(tokens / t for t in ts)
            prefix = "torch_" if who == "torch" else ""
            suffix = {"ontogeny_2dev": "_2dev", "ontogeny_faster": "_faster"}.get(who, "")
            results[f"{prefix}tokens_per_s_{key}{suffix}"] = float(np.median(tps))
            results[f"{prefix}tokens_per_s_{key}{suffix}_range"] = [tps[0], tps[-1]]
            results[f"{prefix}mfu_{key}{suffix}"] = float(np.median(tps)) * flops_per_token(cfg) / 1e9 / peak_gflops
            if who != "torch":  # (torch's steps run in its own process, whose faults this cannot see)
                results[f"page_faults_per_step_{key}{suffix}"] = minor_faults_per_call(fns[who])
        if "ontogeny_2dev" in times:
            ratios = sorted(a / b for a, b in zip(times["ontogeny"], times["ontogeny_2dev"]))
            results[f"ratio_2dev_over_1dev_{key}"] = float(np.median(ratios))
            results[f"ratio_2dev_over_1dev_{key}_range"] = [ratios[0], ratios[-1]]
        ratios = sorted(a / b for a, b in zip(times["ontogeny"], times["ontogeny_faster"]))
        results[f"ratio_faster_over_plain_{key}"] = float(np.median(ratios))
        results[f"ratio_faster_over_plain_{key}_range"] = [ratios[0], ratios[-1]]
        results[f"batch_size_{key}"] = batch
        line = (f"train {name} ({cfg.n_layer}L d{cfg.d_model} T{cfg.context} B{batch}): ontogeny "
                f"{results[f'tokens_per_s_{key}']:,.0f} tokens/s (MFU {results[f'mfu_{key}']:.3f})")
        if have_torch:
            ratios = sorted(a / b for a, b in zip(times["torch"], times["ontogeny"]))  # per window pair
            results[f"ratio_vs_torch_{key}"] = float(np.median(ratios))
            results[f"ratio_vs_torch_{key}_range"] = [ratios[0], ratios[-1]]
            line += (f", torch eager {results[f'torch_tokens_per_s_{key}']:,.0f} tokens/s "
                     f"(MFU {results[f'torch_mfu_{key}']:.3f}), ratio {results[f'ratio_vs_torch_{key}']:.2f}x "
                     f"({ratios[0]:.2f}-{ratios[-1]:.2f} over {windows} interleaved windows)")
            ratios = sorted(a / b for a, b in zip(times["torch"], times["ontogeny_faster"]))
            results[f"ratio_vs_torch_{key}_faster"] = float(np.median(ratios))
            line += f"; flat AdamW {results[f'ratio_vs_torch_{key}_faster']:.2f}x torch"
            if "ontogeny_2dev" in times:
                ratios = sorted(a / b for a, b in zip(times["torch"], times["ontogeny_2dev"]))
                results[f"ratio_vs_torch_{key}_2dev"] = float(np.median(ratios))
                results[f"ratio_vs_torch_{key}_2dev_range"] = [ratios[0], ratios[-1]]
        if "ontogeny_2dev" in times:
            line += (f"; on 2 host devices {results[f'tokens_per_s_{key}_2dev']:,.0f} tokens/s, "
                     f"{results[f'ratio_2dev_over_1dev_{key}']:.2f}x one device"
                     + (f", {results[f'ratio_vs_torch_{key}_2dev']:.2f}x torch" if have_torch else ""))
        line += (f"; flat AdamW {results[f'tokens_per_s_{key}_faster']:,.0f} tokens/s, "
                 f"{results[f'ratio_faster_over_plain_{key}']:.2f}x the default step")
        faults = results[f"page_faults_per_step_{key}"]
        if faults is not None:
            line += f"; page faults a step {faults:,.0f}"
        print(line, flush=True)
    return results
