"""Pretrain a character-level GPT with a Pythia-style checkpoint series."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import data as data_lib
from dynamics import distributed
from dynamics import stats
from dynamics import train as train_lib
from dynamics.checkpoints import Series
from dynamics.runlog import RunFolder, write_json
from experiments import plots
from experiments.cli.config import claim_folder
from models.errors import require
from models import gpt

DESCRIPTION = "train a character-level GPT on Shakespeare, saving a log-spaced checkpoint series"


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    model: gpt.GPTConfig = gpt.GPTConfig()
    train: train_lib.TrainConfig = train_lib.TrainConfig()
    data: data_lib.DataConfig = data_lib.DataConfig()

    def __post_init__(self):
        require(self.train.batch_size >= 1, "train.batch_size must be positive")

    def unused(self) -> dict[str, str]:
        return {"model.vocab_size": "the vocabulary is the corpus's tokenizer's (data.tokenizer)"}


Config = PretrainConfig

PRESETS = {
    # About nanoGPT's CPU budget (1.3M tokens): under 5 minutes on 2 CPU cores; 24 checkpoints.
    "tiny": PretrainConfig(
        model=gpt.GPTConfig(context=64, n_layer=4, n_head=4, d_model=128, dropout=0.0),
        train=train_lib.TrainConfig(steps=1300, batch_size=16, lr=2e-3, min_lr=2e-4, warmup=100,
                                    weight_decay=0.1, eval_every=250, eval_batches=4,
                                    log_checkpoints_until=512, checkpoint_every=100)),
    # nanoGPT shakespeare_char: 6/6/384, context 256, dropout 0.2, 5000 iterations (a GPU job).
    "shakespeare-char": PretrainConfig(
        model=gpt.GPTConfig(context=256, n_layer=6, n_head=6, d_model=384, dropout=0.2),
        train=train_lib.TrainConfig(steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup=100,
                                    weight_decay=0.1, eval_every=250, eval_batches=20,
                                    log_checkpoints_until=512, checkpoint_every=500)),
    # For tests: a few seconds.
    "micro": PretrainConfig(
        model=gpt.GPTConfig(context=32, n_layer=2, n_head=2, d_model=32),
        train=train_lib.TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup=5, eval_every=20, eval_batches=2,
                                    log_checkpoints_until=16, checkpoint_every=20),
        data=data_lib.DataConfig(corpus="synthetic", synthetic_chars=20_000)),
}


def resolve(config: PretrainConfig) -> dict:
    """What `run` runs: the model (its vocabulary is the corpus's, not a key), every training
    field (run reads them all: optimizer, loop with evaluation, batch size, seed, eval batches)
    and the corpus settings `load_corpus` reads."""
    model = {**dataclasses.asdict(config.model), "vocab_size": "the corpus's"}
    return {"model": model, "train": config.train, "data": config.data.settings()}


def pretrain_reference(run: str, preset: str) -> dict:
    """The pretrain series a study analyses, checked before anything is created: the run folder
    `run` when given (it must hold model.json, tokenizer.json and a pretrain series), else the
    `preset` the study would train. Returns {"run" or "preset", "model", "steps"} (checkpoint steps)."""
    from dynamics import checkpoints

    if run:
        require(Path(run).is_dir(), f"pretrain_run={run!r} is not a run folder; give a pretrain run folder, "
                                    f"or leave pretrain_run empty to train pretrain_preset")
        model = checkpoints.load_model_config(run)
        data_lib.load_tokenizer(run)
        steps = Series(run, "pretrain", create=False).steps()
        require(len(steps) >= 1, f"pretrain run {run} holds no pretrain checkpoints; point at a finished run")
        return {"run": str(Path(run).resolve()), "model": model, "steps": steps}
    require(preset in PRESETS, f"pretrain_preset={preset!r} is unknown; choose one of {', '.join(PRESETS)} "
                               f"or give pretrain_run")
    config = PRESETS[preset]
    return {"preset": preset, "model": resolve(config)["model"], "steps": config.train.checkpoint_schedule()}


def resolved_model(config: PretrainConfig, corpus: data_lib.Corpus) -> gpt.GPTConfig:
    """The model config with the corpus's vocabulary size."""
    return dataclasses.replace(config.model, vocab_size=corpus.tokenizer.vocab_size)


def run(config: PretrainConfig, folder: RunFolder) -> dict:
    from dynamics import corpus as corpus_lib
    from dynamics import tblog

    corpus = data_lib.load_corpus(config.data)
    model_config = resolved_model(config, corpus)
    if distributed.is_primary():
        corpus_lib.record_run(folder.root, corpus)  # tokenizer.json + data.json; refuses a changed corpus on resume
        write_json(folder.root / "model.json", model_config)
    train_ids, val_ids = corpus.train_ids, corpus.val_ids
    tc = config.train
    close_tb = tblog.mirror(folder, "pretrain")  # TensorBoard events beside metrics.jsonl (tensorboardX)
    rows = distributed.local_batch(tc.batch_size) if jax.process_count() > 1 else None  # read only our rows

    mesh = train_lib.training_mesh(tc)  # every device of every process; each keeps its own rows
    optimizer = train_lib.scheduled_adamw(tc)
    params = gpt.init_params(model_config, jax.random.PRNGKey(tc.seed))
    state = train_lib.init_state(params, optimizer, tc.seed)
    loss_fn = train_lib.lm_loss(model_config)
    train_step = train_lib.make_train_step(loss_fn, optimizer, dropout=model_config.dropout > 0)
    eval_loss = train_lib.make_eval_fn(loss_fn)
    val_batches = [dict(zip(("inputs", "targets"), b))
                   for b in data_lib.eval_batches(val_ids, tc.eval_batches, tc.batch_size, model_config.context)]

    def eval_fn(params):
        return {"val_loss": float(np.mean([distributed.to_host(eval_loss(params, b)) for b in val_batches]))}

    def batch_fn(step):
        x, y = data_lib.get_batch(train_ids, tc.seed, step, tc.batch_size, model_config.context, rows=rows)
        return {"inputs": x, "targets": y}

    t0 = time.perf_counter()
    try:
        state = train_lib.run_training(folder, "pretrain", state, train_step, batch_fn, tc, eval_fn=eval_fn,
                                       tokens_per_step=tc.batch_size * model_config.context, mesh=mesh)
    finally:
        if close_tb:
            close_tb()
    wall = time.perf_counter() - t0
    records = folder.read_metrics()
    plots.loss_curve(records, folder.figure("loss"), title=f"pretrain ({model_config.n_layer}L, d={model_config.d_model})")
    vals = [r["val_loss"] for r in records if r.get("val_loss") is not None and r.get("stage") == "pretrain"]
    final_val = [r["val_loss"] for r in records if r.get("step") == tc.steps and r.get("val_loss") is not None]
    tps = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    window_loss = val_window_losses(distributed.to_host(state["params"]), model_config, val_batches)
    return {
        "val_loss": final_val[-1] if final_val else eval_fn(state["params"])["val_loss"],
        "val_loss_ci": stats.mean_ci(window_loss), "n_val_windows": int(window_loss.size),
        "vocab_size": model_config.vocab_size,
        "best_val_loss": min(vals) if vals else None,
        "steps": tc.steps,
        "n_checkpoints": len(Series(folder.root, "pretrain").steps()),
        "n_params": gpt.n_params(distributed.to_host(state["params"])),
        "tokens_per_s": float(np.median(tps)) if tps else None,
        "train_wall_s": wall,
        **data_counts(corpus, train_ids, val_ids),
        **full_split_summary(distributed.to_host(state["params"]), model_config, val_ids),
        "train_devices": int(mesh.devices.size) if mesh is not None else 1,
    }


def data_counts(corpus, train_ids, val_ids) -> dict:
    """Split sizes for the summary (characters where the corpus is text; tokens always)."""
    record = corpus.record
    return {"train_chars": record.get("train_chars"), "val_chars": record.get("val_chars"),
            "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)),
            "val_works": list(corpus.val_works), "tokenizer": record.get("tokenizer", "char")}


def window_loss_fn(model_config: gpt.GPTConfig):
    """Jitted (params, inputs [B, S], targets [B, S]) -> each window's mean next-token loss [B]."""
    def per_window(p, x_BS, y_BS):
        logp_BSV = jax.nn.log_softmax(gpt.apply(p, x_BS, model_config)[0].astype(jnp.float32), -1)
        return -jnp.take_along_axis(logp_BSV, y_BS[..., None], -1)[..., 0].mean(-1)
    return jax.jit(per_window)


def val_window_losses(params, model_config: gpt.GPTConfig, val_batches: list[dict]) -> np.ndarray:
    """Mean loss of every held-out window [N] (their mean is the reported val loss).

    [choice] The interval of the val loss is a bootstrap over these windows: blocks of
    `context` characters at fixed random offsets in the held-out plays, the text's natural
    unit (characters within a block are strongly dependent). One training seed: the spread
    over seeds is not in it (a tiny run costs ~5 min)."""
    fn = window_loss_fn(model_config)
    return np.concatenate([np.asarray(fn(params, b["inputs"], b["targets"])) for b in val_batches])


def full_split_losses(window_loss, context: int, ids: np.ndarray, tokens_per_batch: int = 8192) -> np.ndarray:
    """Mean loss of every non-overlapping window of the split `ids` [N] (`data.full_split_batches`),
    scored `tokens_per_batch // context` windows at a time: memory is bounded by one batch
    whatever the split's size, and one shape compiles once. `window_loss(inputs, targets)` gives
    the per-window losses [B] (any framework: `bench` scores a PyTorch model through this too)."""
    out = []
    for x_BS, y_BS, n_real in data_lib.full_split_batches(ids, context, max(1, tokens_per_batch // context)):
        out.append(np.asarray(window_loss(x_BS, y_BS), np.float64)[:n_real])
    return np.concatenate(out)


def full_split_summary(params, model_config: gpt.GPTConfig, ids: np.ndarray, tokens_per_batch: int = 8192) -> dict:
    """The summary's whole-split validation: `val_loss_full` (mean over every non-overlapping
    window, so over every scored token alike), its bootstrap interval over windows (as
    `val_loss_ci`), the number of windows and of tokens scored. The periodic evaluations keep
    their fixed subset (`train.eval_batches`): this runs once, at the end."""
    fn = window_loss_fn(model_config)
    losses = full_split_losses(lambda x, y: fn(params, x, y), model_config.context, ids, tokens_per_batch)
    return {"val_loss_full": float(losses.mean()), "val_loss_full_ci": stats.mean_ci(losses),
            "n_val_windows_full": int(losses.size), "val_tokens_full": int(losses.size * model_config.context)}


def findings(summary: dict) -> list[str]:
    """The conclusions of a pretrain summary, with the interval of its val loss."""
    s = summary
    uniform = f" (a uniform guess over {s['vocab_size']} symbols scores {np.log(s['vocab_size']):.2f})" \
        if s.get("vocab_size") else ""
    out = [f"A {s['n_params']:,}-parameter GPT trained for {s['steps']} steps reached validation loss "
           f"{stats.ci_text(s, 'val_loss', 3)} nats/{'char' if s.get('tokenizer', 'char') == 'char' else 'token'} "
           f"on held-out text{uniform}, saving {s['n_checkpoints']} "
           f"checkpoints."]
    if s.get("val_loss_ci") is not None:
        out.append(f"The interval is a bootstrap over {s['n_val_windows']} held-out windows of one training seed; "
                   f"seed-to-seed spread is not in it.")
    if s.get("val_loss_full") is not None:
        out.append(f"On the whole held-out split ({s['val_tokens_full']:,} tokens in {s['n_val_windows_full']:,} "
                   f"windows) the final model scores {stats.ci_text(s, 'val_loss_full', 3)}.")
    return out


def run_group(configs: list[PretrainConfig], folders: list[RunFolder]) -> list[dict]:
    """Train several pretrain configs that differ only in `dynamics.members.VMAP_KEYS` together,
    one vmapped program; each folder becomes an ordinary pretrain run. Returns per member a
    summary, or {"error": message} for a member whose loss diverged."""
    from dynamics import members

    base = configs[0]
    require(all(dataclasses.replace(c, train=base.train) == base for c in configs),
            "a vmapped sweep group may differ only in train.seed, train.lr, train.min_lr, train.weight_decay")
    members.check_compatible([c.train for c in configs])
    corpus = data_lib.load_corpus(base.data)
    model_config = resolved_model(base, corpus)
    from dynamics import corpus as corpus_lib

    for folder in folders:
        corpus_lib.record_run(folder.root, corpus)
        write_json(folder.root / "model.json", model_config)
    tc = base.train
    train_ids, val_ids = corpus.train_ids, corpus.val_ids  # encoded once
    loss_fn = train_lib.lm_loss(model_config)
    states = members.init_states(lambda seed: gpt.init_params(model_config, jax.random.PRNGKey(seed)),
                                 [c.train for c in configs])
    step_fn = members.make_step(loss_fn, tc, dropout=model_config.dropout > 0)
    eval_loss = jax.jit(jax.vmap(lambda p, b: loss_fn(p, b, None), in_axes=(0, None)))
    val_batches = [dict(zip(("inputs", "targets"), b))
                   for b in data_lib.eval_batches(val_ids, tc.eval_batches, tc.batch_size, model_config.context)]

    def eval_fn(params):
        return {"val_loss": np.mean([np.asarray(eval_loss(params, b)) for b in val_batches], axis=0)}

    def batch_fn(k, step):
        x, y = data_lib.get_batch(train_ids, configs[k].train.seed, step, tc.batch_size, model_config.context)
        return {"inputs": x, "targets": y}

    t0 = time.perf_counter()
    states, failures = members.run_members(folders, "pretrain", states, step_fn, batch_fn, members.hyperparams(
        [c.train for c in configs]), tc, eval_fn=eval_fn, tokens_per_step=tc.batch_size * model_config.context)
    wall = time.perf_counter() - t0
    final = np.asarray(eval_fn(states["params"])["val_loss"])
    out, counts = [], data_counts(corpus, train_ids, val_ids)
    for k, folder in enumerate(folders):
        if k in failures:
            out.append({"error": failures[k]})
            continue
        records = folder.read_metrics()
        plots.loss_curve(records, folder.figure("loss"), title=f"pretrain member {k} of a vmapped group of {len(folders)}")
        vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
        tps = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
        out.append({"val_loss": float(final[k]), "best_val_loss": min(vals) if vals else None, "steps": tc.steps,
                    "n_checkpoints": len(Series(folder.root, "pretrain").steps()),
                    "n_params": gpt.n_params(jax.device_get(jax.tree.map(lambda x: x[0], states["params"]))),
                    "tokens_per_s": float(np.median(tps)) if tps else None, "train_wall_s": wall,
                    "group_size": len(folders), **counts})
    return out


def ensure_pretrain(path: str | os.PathLike | RunFolder, config: PretrainConfig | None = None,
                    preset: str = "tiny") -> Path:
    """Train (or resume, or reuse if finished) a pretrain run at `path`; return its path."""
    root = Path(path.root if isinstance(path, RunFolder) else path)
    config = config or PRESETS[preset]
    with claim_folder(root, "pretrain", preset, config):  # one writer: another process on it exits 2
        folder = RunFolder(root)
        if folder.read_summary() is None:
            folder.write_summary(run(config, folder))
    return root
