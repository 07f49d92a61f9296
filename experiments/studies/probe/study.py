"""Linear probes on every layer of every checkpoint of any run (an imported suite or a run trained
here), checkpoints streamed from disk and vmapped in memory-bounded chunks (`map_stack`).

Labels come from `labels=FILE.jsonl` (rows {"text": ..., "label": ...}, a label a string or an
int) or, without a file, from the built-in task (`probes.layer_probes.word_end_task`: does the
word end after the last token? balanced within every last token, so no single token's embedding
can decode it) on held-out text: `text` on `run` (default Shakespeare's held-out works), or the
pretrain run's own corpus. The examples are split at random into fit / validation / test
([choice] the layer is chosen on validation at the last checkpoint, so the test accuracy it
reports is not selected on). Baselines measured in the same run: a probe fitted on shuffled
labels (the control), the first checkpoint, and the majority-class rate.

The method is `probes.layer_probes` (features, fits) and `probes.linear` (the Newton solver);
the figures are `experiments.studies.probe.figures`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from dynamics import jsonl, run_tokenizer
from dynamics import stats
from dynamics.checkpoints import load_model_config, map_stack, open_stack, set_memory_budget
from dynamics.runlog import RunFolder
from experiments.studies.pretrain import study as pretrain
from experiments.studies import run_inputs as suite
from . import figures
from models.errors import OntogenyError, require
from probes import layer_probes as lp
from probes.waves.on_run import token_strings

DESCRIPTION = "linear probes on every layer of every checkpoint of any run, against shuffled labels and step 0"
FEATURES = ("last", "mean")


@dataclasses.dataclass(frozen=True)
class Config:
    run: str = ""                 # a run of any family (imported suite or trained here), streamed; "" = train pretrain_preset
    pretrain_preset: str = "tiny" # the pretrain preset trained (or reused) in OUT/pretrain when run is empty
    labels: str = ""              # JSONL file of {"text", "label"} rows; "" = the built-in word-end task
    text: str = ""                # built-in task on run=...: text file or folder ("" = the run's corpus, else Shakespeare)
    feature: str = "last"         # probe the hidden state at the last token ("last") or the mean over tokens ("mean")
    window: int = 32              # tokens per text: built-in windows, and the last tokens kept of a labels row
    n_examples: int = 2048        # built-in task: examples drawn (balanced within every last token)
    test_fraction: float = 0.25   # share of the examples held out for the reported accuracy
    val_fraction: float = 0.25    # share held out to choose the layer
    C: float = 1.0                # inverse L2 strength, as in scikit-learn's LogisticRegression
    n_iter: int = 50              # most Newton iterations per probe
    batch_size: int = 64          # texts per forward pass
    seed: int = 0                 # the split, the shuffled control and the built-in draw
    ci_level: float = 0.95        # level of the Wilson and bootstrap intervals
    chunk_size: int = 0           # checkpoints per vmapped chunk (0: from the memory budget)
    memory_budget_gb: float = 0.0 # host memory for the checkpoint chunks (0 = a quarter of free memory)

    def __post_init__(self):
        require(self.feature in FEATURES, f"feature={self.feature!r} must be one of {', '.join(FEATURES)}")
        require(self.window >= 1 and self.batch_size >= 1 and self.n_iter >= 1,
                "window, batch_size and n_iter must be >= 1")
        require(self.n_examples >= 16, f"n_examples={self.n_examples} must be >= 16")
        require(0 < self.test_fraction and 0 < self.val_fraction and self.test_fraction + self.val_fraction < 0.9,
                "test_fraction and val_fraction must be > 0 and leave at least 10% to fit on")
        require(self.C > 0, f"C={self.C} must be > 0 (use a large C for a nearly unpenalised fit)")
        require(0.5 < self.ci_level < 1, f"ci_level={self.ci_level} must lie in (0.5, 1)")
        require(self.chunk_size >= 0 and self.memory_budget_gb >= 0, "chunk_size and memory_budget_gb must be >= 0")

    def unused(self) -> dict[str, str]:
        keys = {"pretrain_preset": "run is given, so no pretrain preset is trained"} if self.run else {}
        if self.labels:
            keys["n_examples"] = "the labels file gives the examples"
            keys["text"] = "the labels file gives the texts"
        elif not self.run:
            keys["text"] = "the built-in task on the pretrain preset reads its own corpus"
        return keys


PRESETS = {"tiny": Config()}


def read_labels(path: str) -> tuple[list[str], list, list]:
    """(texts, labels, sorted classes) of a JSONL labels file, every problem one line."""
    p = Path(path)
    require(p.is_file(), f"labels={path!r} is not a file; give a JSONL file of {{\"text\": ..., \"label\": ...}} rows")
    texts, labels = [], []
    for i, row in jsonl.rows(p, '{"text", "label"} rows'):
        ok = isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"] != "" and \
            isinstance(row.get("label"), (str, int)) and not isinstance(row.get("label"), bool)
        require(ok, f"{path} line {i} is not a row {{\"text\": non-empty string, \"label\": string or int}}; fix it")
        texts.append(row["text"])
        labels.append(row["label"])
    classes = sorted(set(labels), key=lambda v: (isinstance(v, str), v))
    require(len(classes) >= 2, f"{path} holds {len(classes)} class(es); a probe needs at least two labels")
    require(len(texts) >= 16, f"{path} holds {len(texts)} rows; give at least 16 (fit, validation and test splits)")
    return texts, labels, classes


def resolve(config: Config) -> dict:
    """The run probed (checked: model, tokenizer, a pretrain series; or the preset trained), the
    labels (the file checked and hashed, or the built-in task), and the study's keys."""
    ref = suite.run_reference(config.run) if config.run else pretrain.pretrain_reference("", config.pretrain_preset)
    model = ref["model"] if isinstance(ref["model"], dict) else dataclasses.asdict(ref["model"])
    require(config.window <= model["context"], f"window={config.window} exceeds the model's context of "
                                               f"{model['context']}; lower window")
    if config.labels:
        texts, labels, classes = read_labels(config.labels)
        if config.run:  # tokenized and split now: a file the run cannot probe is refused before any folder
            tokens, lengths, y, _, _ = labelled_examples(config, run_tokenizer.load_tokenizer(config.run))
            probe_data(config, tokens, lengths, y)
        digest = hashlib.sha256(Path(config.labels).read_bytes()).hexdigest()
        task = {"labels": str(Path(config.labels).resolve()), "sha256": digest, "rows": len(texts),
                "classes": [str(c) for c in classes]}
    else:
        suite.check_text(config.text)
        task = {"builtin": "word_end", "text": config.text or "the run's corpus"}
    folded = {"run", "pretrain_preset", "labels"} | set(config.unused())
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in folded}
    return {"run": {k: v for k, v in ref.items() if k != "steps"}, "task": task, "study": study}


def _heldout_ids(config: Config, run_dir: Path, tokenizer) -> np.ndarray:
    """Token ids of the built-in task's text: `text`, else the held-out split of the run's own
    corpus (a run trained here), else Shakespeare's held-out works."""
    if not config.text and suite.trained_here(run_dir):
        return tokenizer.encode(suite.own_corpus(run_dir).val_text)
    return suite.text_corpus(str(run_dir), config.text).val_ids


def examples(config: Config, run_dir: Path, tokenizer, model, folder: RunFolder):
    """(tokens [N, S], lengths [N], y [N] class indices, class names, split groups [N] or None),
    from the labels file or the built-in task (written to OUT/labels.jsonl to be read and reused;
    its balanced pairs are split groups)."""
    if config.labels:
        return labelled_examples(config, tokenizer)
    windows, y = lp.word_end_task(_heldout_ids(config, run_dir, tokenizer), token_strings(tokenizer, model.vocab_size),
                                  config.n_examples, config.window, config.seed)
    require(len(y) >= 16, f"the text yields only {len(y)} balanced word-end examples; give a longer text "
                          f"(--set text=...) or a labels file")
    with open(folder.root / "labels.jsonl", "w") as f:
        for w, label in zip(windows, y):
            f.write(json.dumps({"text": tokenizer.decode(w), "label": int(label)}) + "\n")
    return (windows, np.full(len(y), config.window, np.int32), y.astype(np.int32), ["word goes on", "word ends"],
            np.arange(len(y)) // 2)


def labelled_examples(config: Config, tokenizer):
    """`examples` of a labels file: (tokens [N, S], lengths [N], y [N], class names, None)."""
    texts, labels, classes = read_labels(config.labels)
    ids = []
    for row, text in enumerate(texts, 1):
        try:
            ids.append(tokenizer.encode(text))
        except OntogenyError as e:
            raise OntogenyError(f"{config.labels}: row {row} cannot be read with the run's tokenizer ({e})") from None
    empty = [i + 1 for i, x in enumerate(ids) if len(x) == 0]
    require(not empty, f"{config.labels}: row {empty[:1]} encodes to no token with the run's tokenizer; "
                       f"drop it or give text the tokenizer can read")
    index = {c: k for k, c in enumerate(classes)}
    tokens, lengths = lp.pad_tokens(ids, config.window)
    return tokens, lengths, np.array([index[v] for v in labels], np.int32), [str(c) for c in classes], None


def probe_data(config: Config, tokens, lengths, y, groups=None) -> dict:
    """The arrays every checkpoint's probe fn reads: tokens, labels, the split, the control labels."""
    fit, val, test = lp.split_indices(len(y), config.test_fraction, config.val_fraction, config.seed, groups)
    require(len(np.unique(y[fit])) >= 2, "the fit split holds one class only; give more examples of each label")
    control = np.random.default_rng(config.seed + 1).permutation(y[fit])
    return {"tokens": tokens, "lengths": lengths, "y": y, "fit": fit, "val": val, "test": test,
            "y_control": control.astype(np.int32)}


def analyse(config: Config, run_dir: Path, data: dict, n_classes: int) -> dict:
    """Every (checkpoint, layer) probe of a run, its checkpoints streamed: leaves [C, L+1, 2, ...]."""
    model = load_model_config(run_dir)
    steps, disk = open_stack(run_dir)
    fn = lp.make_probe_fn(model, feature=config.feature, batch_size=config.batch_size, n_classes=n_classes,
                          C=config.C, n_iter=config.n_iter)
    out = map_stack(fn, disk, data, chunk_size=config.chunk_size or None)
    return {"steps": steps, **out, "max_resident": disk.max_resident}


def run(config: Config, folder: RunFolder) -> dict:
    """Examples, the probes of every checkpoint and layer, metrics per checkpoint, figures, summary."""
    t0 = time.perf_counter()
    set_memory_budget(int(config.memory_budget_gb * 2**30))
    run_dir = Path(config.run) if config.run else pretrain.ensure_pretrain(folder.sub("pretrain"),
                                                                          preset=config.pretrain_preset)
    tokenizer, model = run_tokenizer.load_tokenizer(run_dir), load_model_config(run_dir)
    tokens, lengths, y, classes, groups = examples(config, run_dir, tokenizer, model, folder)
    data = probe_data(config, tokens, lengths, y, groups)
    res = analyse(config, run_dir, data, len(classes))
    acc_val, acc_test = res["right_val"].mean(-1), res["right_test"].mean(-1)      # [C, L+1, 2]
    logged = {r.get("step") for r in folder.read_metrics()}
    for c, step in enumerate(res["steps"]):
        if int(step) not in logged:
            folder.log({"step": int(step), "acc_test": acc_test[c, :, 0], "acc_val": acc_val[c, :, 0],
                        "control_test": acc_test[c, :, 1], "converged": int(res["converged"][c].sum())})
    summary = summarize(config, res, data, classes)
    summary["text_source"] = str(Path(config.labels).resolve()) if config.labels else \
        f"word-end task on {suite.text_source(run_dir, config.text)}"
    figures.plot_all(folder, res["steps"], acc_test, summary, res["right_test"].shape[-1], config.ci_level)
    summary.update({"wall_s": time.perf_counter() - t0, "max_resident_checkpoints": int(res["max_resident"])})
    return summary


def summarize(config: Config, res: dict, data: dict, classes) -> dict:
    """The headline numbers: the best layer (chosen on validation at the last checkpoint), its test
    accuracy with Wilson intervals beside the control, the first checkpoint and the majority rate,
    paired-bootstrap gains, the step of emergence and how many probes converged."""
    right, steps, level = res["right_test"], res["steps"], config.ci_level
    best = int(np.argmax(res["right_val"][-1, :, 0].mean(-1)))
    n = right.shape[-1]
    y_fit, y_test = data["y"][data["fit"]], data["y"][data["test"]]
    out = {"steps": [int(s) for s in steps], "classes": classes, "n_examples": int(len(data["y"])), "n_test": int(n),
           "feature": config.feature, "n_layers": int(right.shape[1]), "best_layer": best,
           "majority_rate": float(np.mean(y_test == np.bincount(y_fit).argmax()))}
    for key, c, j in (("acc_last", -1, 0), ("control_last", -1, 1), ("acc_first", 0, 0)):
        out[key] = float(right[c, best, j].mean())
        out[f"{key}_ci"] = stats.wilson_ci(int(right[c, best, j].sum()), n, level)
    for key, a in (("gain_over_first", right[0, best, 0]), ("gain_over_control", right[-1, best, 1])):
        out[key] = float(right[-1, best, 0].mean() - a.mean())
        out[f"{key}_ci"] = stats.paired_bootstrap_ci(a, right[-1, best, 0], level=level, seed=config.seed)
    c = lp.emergence_index(right[:, best, 0], right[:, best, 1], level)
    out["emergence_step"] = None if c is None else int(steps[c])
    out["probes_converged"], out["probes_total"] = int(res["converged"].sum()), int(res["converged"].size)
    return out


def findings(summary: dict) -> list[str]:
    """The conclusions of a probe summary, with intervals and verdicts."""
    n, best, last = summary["n_test"], summary["best_layer"], summary["steps"][-1]
    layer = "the embedding" if best == 0 else f"the residual after block {best - 1}"
    gain = summary["gain_over_first_ci"]
    verdict = ("it rose" if gain[0] > 0 else "it fell") if stats.excludes(gain) else \
        "the interval includes 0, so training shows no gain"
    emerged = summary["emergence_step"]
    return [
        f"At step {last} a linear probe on {layer} (layer chosen on validation) reads the label with held-out "
        f"accuracy {stats.ci_text(summary, 'acc_last', 3)} (Wilson, {n} test examples"
        + (f" from {summary['text_source']}" if "text_source" in summary else "") + "), against "
        f"{stats.ci_text(summary, 'control_last', 3)} for shuffled labels and a majority rate of "
        f"{summary['majority_rate']:.3f}.",
        f"Against the first checkpoint ({stats.ci_text(summary, 'acc_first', 3)}) the change is "
        f"{stats.format_ci(summary['gain_over_first'], gain, 3, signed=True)} (paired bootstrap over test examples): "
        f"{verdict}; the probe's interval " + (f"first clears the control's at step {emerged}." if emerged is not None
                                                else "never clears the control's."),
        f"{summary['probes_converged']}/{summary['probes_total']} probes converged.",
    ]
