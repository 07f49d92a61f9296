"""`python -m experiments evaluate --set run=RUN [--set text=PATH] [--set tasks=JSONL]`.

Every checkpoint of a run (trained here or imported with `experiments import`) on
- a text corpus: mean next-token cross-entropy and top-1 accuracy over fixed windows of the
  text, tokenised with the run's own tokenizer (characters or BPE);
- multiple-choice tasks from a local JSONL file, one item a line:
  {"context": "...", "choices": ["...", "..."], "answer": 1}; a choice is picked by the summed
  log-likelihood of its tokens after the context ([choice]: unnormalised, lm-eval's `acc`;
  context and choice are tokenised separately and concatenated, the context cut from the left
  to fit the model's context).
Both are one function of one checkpoint, vmapped over the checkpoint axis by `map_stack`.
Without `text`, a run trained here is scored on its own corpus's validation text.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import data as data_lib
from dynamics import jsonl
from models.errors import require
from dynamics.runlog import RunFolder
from experiments.studies import run_inputs as suite

DESCRIPTION = "every checkpoint's loss, next-token accuracy and multiple-choice accuracy (vmapped over checkpoints)"


@dataclasses.dataclass(frozen=True)
class Config:
    run: str = ""              # run folder (trained here or imported); required
    text: str = ""             # UTF-8 text file; empty: the run's own validation text (runs trained here)
    tasks: str = ""            # JSONL of multiple-choice items; empty: none
    stage: str = "pretrain"    # the series scored (pretrain, sft, rl, ... as imported or trained)
    steps: tuple[int, ...] = ()  # empty: every checkpoint of the stage
    seq_len: int = 0           # window length; 0: the model's context (at most max_seq_len)
    max_seq_len: int = 256     # cap on the window length (memory: logits are batch x seq_len x vocab)
    n_windows: int = 32        # text windows, spread evenly over the text
    batch: int = 8             # windows (or choices) per forward pass inside one checkpoint
    chunk: int = 4             # checkpoints per vmapped chunk ([choice]: fixed, since logits dominate memory)

    def __post_init__(self):
        for name in ("n_windows", "batch", "chunk", "max_seq_len"):
            require(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be a positive integer")
        require(self.seq_len >= 0, f"seq_len={self.seq_len} must be >= 0 (0: the model's context)")


PRESETS = {"tiny": Config(), "full": Config(n_windows=512, max_seq_len=2048)}  # `run` comes from --set


def resolve(config: Config) -> dict:
    """What `run` evaluates, every reference checked before a folder is claimed: the run's model
    and series, the text (or the run's own corpus) and the tasks file."""
    from dynamics.checkpoints import Series, load_model_config

    require(bool(config.run), "evaluate needs a run folder: --set run=RUN")
    model = load_model_config(config.run)
    steps = Series(config.run, config.stage, create=False).steps()
    require(steps, f"{config.run} holds no '{config.stage}' checkpoints; import or train them first")
    missing = sorted(set(config.steps) - set(steps))
    require(not missing, f"steps {missing[:5]} are not in {config.run}; available: {steps[:8]}")
    for key in ("text", "tasks"):
        path = getattr(config, key)
        require(not path or Path(path).is_file(), f"{key}={path} is not a file; give an existing path")
    if config.tasks:  # read and tokenized now: a file the run cannot score is refused before any folder
        from dynamics import run_tokenizer

        seq_len = min(config.seq_len or model.context, config.max_seq_len, model.context)  # as `run` cuts them
        choice_batch(read_tasks(Path(config.tasks)), run_tokenizer.load_tokenizer(config.run), seq_len)
    if not config.text:
        require((Path(config.run) / "config.json").exists(), f"{config.run} is not a run trained here, so it has "
                f"no corpus of its own; give a text file with --set text=PATH")
    return {"model": getattr(model, "family", "gpt"), "steps": list(config.steps) or steps,
            "study": dataclasses.asdict(config)}


def _read_text(config: Config, run_dir: Path) -> str:
    return suite.read_text(config.text) if config.text else suite.own_corpus(run_dir).val_text


def text_windows(ids: np.ndarray, seq_len: int, n_windows: int):
    """(inputs [N, S], targets [N, S]): N non-overlapping windows of S+1 tokens spread over the text."""
    n_total = (len(ids) - 1) // seq_len
    require(n_total >= 1, f"the text has {len(ids)} tokens, fewer than seq_len+1={seq_len + 1}; "
                          f"give a longer text or a smaller --set seq_len")
    starts = data_lib.spread(n_total, n_windows) * seq_len
    windows = np.stack([ids[s:s + seq_len + 1] for s in starts]).astype(np.int32)
    return windows[:, :-1], windows[:, 1:]


TASK_ROW = '{"context": string, "choices": [non-empty string, ...] (two or more), "answer": index of a choice}'


def read_tasks(path: Path) -> list[dict]:
    """Multiple-choice items of a JSONL file, every problem one line."""
    items = []
    for n, item in jsonl.rows(path, "multiple-choice items (--set tasks=PATH)"):
        choices = item.get("choices") if isinstance(item, dict) else None
        ok = (isinstance(item, dict) and isinstance(item.get("context"), str) and isinstance(choices, list)
              and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)
              and jsonl.plain_int(item.get("answer")) and 0 <= item["answer"] < len(choices))
        require(ok, f"{path}:{n} is not an item like {TASK_ROW}")
        items.append(item)
    require(items, f"{path} holds no items")
    return items


def choice_batch(items, tokenizer, context: int):
    """(tokens [M, P], targets [M, P], mask [M, P], item index [M]) for every (item, choice)."""
    rows, owner = [], []
    for i, item in enumerate(items):
        ctx = list(tokenizer.encode(item["context"]))
        for choice in item["choices"]:
            ans = list(tokenizer.encode(choice))
            require(ans, f"a choice of item {i} encodes to no tokens; give non-empty choices")
            seq = (ctx + ans)[-(context + 1):]
            n_ans = min(len(ans), len(seq) - 1)
            require(n_ans >= 1, f"item {i} has an empty context and a one-token choice, which leaves no token to "
                                f"score; give the item a context")
            rows.append((seq, n_ans))
            owner.append(i)
    P = max(len(seq) - 1 for seq, _ in rows)
    tokens, targets, mask = (np.zeros((len(rows), P), np.int32) for _ in range(3))
    for r, (seq, n_ans) in enumerate(rows):
        n = len(seq) - 1
        tokens[r, :n], targets[r, :n] = seq[:-1], seq[1:]
        mask[r, n - n_ans:n] = 1
    return tokens, targets, mask.astype(bool), np.asarray(owner)


def make_scorer(model_config, batch: int):
    """fn(params, tokens [N, P], targets [N, P], mask [N, P]) -> (log-likelihood [N], correct [N])
    summed over each row's masked positions; N must be a multiple of `batch`."""
    import models

    def score(params, tokens, targets, mask):
        N, P = tokens.shape

        def one(rows):
            x, y, m = rows
            logits, _ = models.apply(params, x, model_config)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            ll = jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
            hit = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
            return (ll * m).sum(-1), (hit * m).sum(-1)

        ll, hit = jax.lax.map(one, tuple(a.reshape(N // batch, batch, P) for a in (tokens, targets, mask)))
        return ll.reshape(N), hit.reshape(N)

    return score


def _pad_rows(batch: int, *arrays):
    extra = -len(arrays[0]) % batch
    return tuple(np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)]) for a in arrays)


def _figure(rows: list[dict], path, chance: float | None):
    import matplotlib.pyplot as plt
    from experiments import plots

    steps = [r["step"] for r in rows]
    panels = [("loss", "cross-entropy (nats/token)"), ("accuracy", "next-token accuracy")]
    if chance is not None:
        panels.append(("mc_accuracy", "multiple-choice accuracy"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for ax, (key, label) in zip(np.atleast_1d(axes), panels):
        ax.plot(steps, [r[key] for r in rows], "o-", ms=3)
        if key == "mc_accuracy":
            ax.axhline(chance, color="gray", ls="--", label="chance")
            ax.legend()
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    plots.save(fig, path)


def mc_accuracy(scorer, params, items, tokenizer, seq_len: int, config: Config) -> np.ndarray:
    """[T] multiple-choice accuracy: per item, the choice of highest summed log-likelihood."""
    from dynamics.checkpoints import map_stack

    tok, tgt, mask, owner = choice_batch(items, tokenizer, seq_len)
    tok, tgt, mask = _pad_rows(config.batch, tok, tgt, mask)
    ll_choice, _ = map_stack(scorer, params, tok, tgt, mask, chunk_size=config.chunk)
    answers = np.array([int(it["answer"]) for it in items])
    first = np.searchsorted(owner, np.arange(len(items)))
    picked = np.array([[int(np.argmax(scores[f:f + len(it["choices"])])) for f, it in zip(first, items)]
                       for scores in ll_choice[:, :len(owner)]])
    return (picked == answers[None, :]).mean(1)


def run(config: Config, folder: RunFolder) -> dict:
    from dynamics.checkpoints import load_model_config, load_stack, map_stack
    from dynamics.run_tokenizer import load_tokenizer

    require(bool(config.run), "evaluate needs a run folder: --set run=RUN")
    t0, run_dir = time.perf_counter(), Path(config.run)
    steps, params = load_stack(run_dir, config.steps or None, config.stage)
    model, tokenizer = load_model_config(run_dir), load_tokenizer(run_dir)
    items = read_tasks(Path(config.tasks)) if config.tasks else []
    seq_len = min(config.seq_len or model.context, config.max_seq_len, model.context)
    ids = tokenizer.encode(_read_text(config, run_dir))
    require(len(ids) == 0 or int(ids.max()) < model.vocab_size,
            f"the tokenizer in {run_dir} yields ids beyond the model's vocabulary ({model.vocab_size})")
    x, y = text_windows(ids, seq_len, config.n_windows)
    x, y, m = _pad_rows(config.batch, x, y, np.ones_like(x, bool))
    scorer = make_scorer(model, config.batch)
    ll, hit = map_stack(scorer, params, x, y, m, chunk_size=config.chunk)
    n_tok = int(m.sum())
    loss, acc = -ll.sum(1) / n_tok, hit.sum(1) / n_tok
    rows = [{"step": int(s), "stage": config.stage, "loss": float(l), "accuracy": float(a)}
            for s, l, a in zip(steps, loss, acc)]
    if items:
        for row, accuracy in zip(rows, mc_accuracy(scorer, params, items, tokenizer, seq_len, config)):
            row["mc_accuracy"] = float(accuracy)
    chance = float(np.mean([1.0 / len(it["choices"]) for it in items])) if items else None
    folder.metrics_path.unlink(missing_ok=True)  # a re-run recomputes: one row per checkpoint
    for row in rows:
        folder.log(row)
    _figure(rows, folder.figure("evaluate"), chance)
    best = min(rows, key=lambda r: r["loss"])
    summary = {"run": str(run_dir), "stage": config.stage, "n_checkpoints": len(rows), "seq_len": seq_len,
               "text_source": suite.text_source(run_dir, config.text),
               "tokens_per_checkpoint": n_tok, "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
               "accuracy_last": rows[-1]["accuracy"], "best_step": best["step"], "best_loss": best["loss"],
               "seconds": round(time.perf_counter() - t0, 2)}
    if items:
        summary.update(n_items=len(items), mc_chance=chance, mc_accuracy_last=rows[-1]["mc_accuracy"],
                       mc_accuracy_best=max(r["mc_accuracy"] for r in rows))
    return summary


def findings(summary: dict) -> list[str]:
    text = f" of {summary['text_source']}" if "text_source" in summary else ""
    out = [f"{summary['n_checkpoints']} checkpoints on {summary['tokens_per_checkpoint']} tokens{text}: loss "
           f"{summary['loss_first']:.3f} -> {summary['loss_last']:.3f} nats/token (best at step {summary['best_step']}), "
           f"final next-token accuracy {summary['accuracy_last']:.3f}."]
    if "mc_accuracy_last" in summary:
        out.append(f"Multiple choice on {summary['n_items']} items: final accuracy {summary['mc_accuracy_last']:.3f} "
                   f"(best {summary['mc_accuracy_best']:.3f}; chance {summary['mc_chance']:.3f}).")
    return out
