"""A run's developmental atlas: the training-dynamics measures of the field over its whole
checkpoint series, each computed for one checkpoint and vmapped over the series (`map_stack`).

- Local learning coefficient (Lau et al. 2023; Hoogland et al. 2024) of `llc_checkpoints`
  checkpoints, SGLD chains as a second vmapped axis (`probes.development.llc`), on windows of
  the run's training text; the chains' spread is its interval, their traces are kept.
- Linear or debiased CKA (Kornblith et al. 2019; Song et al. 2012) between every pair of
  checkpoints per layer, on the residuals at `cka_examples` positions of held-out windows
  (`probes.development.cka`), with jackknife intervals over windows.
- Previous-token and induction scores of every head on repeated random tokens, against chance
  (uniform attention) and the same offsets on unrepeated tokens; the in-context learning score
  (Olsson et al. 2022; `probes.development.heads`).
- The logit lens per (checkpoint, layer) on held-out windows (`probes.development.lens`); its
  last layer is the model's own loss.
- Weight statistics per checkpoint and matrix: Frobenius norm, stable rank, singular values.

Any run: a pretrain run (`pretrain_run`, as the quickstart gives it, or the preset trained into
OUT/pretrain) or `run` of any family (an imported GPT-NeoX / LLaMA / GPT-2 suite or a run
trained here), its checkpoints streamed from disk in chunks under `memory_budget_gb`. Text: a
pretrain run's own corpus; on `run`, `text` when given, else the run's own corpus (a run trained
here), else Shakespeare, read with the run's tokenizer. Held-out windows serve the lens, CKA
and the ICL score; training windows the LLC.
The computations are in `experiments.studies.development.measures`, the figures in `figures`.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm.auto import tqdm

from dynamics.checkpoints import set_memory_budget
from dynamics.runlog import RunFolder
from experiments.studies import run_inputs as suite
from experiments.studies.pretrain import study as pretrain
from models.errors import require
from probes.development.llc import SGLDConfig
from . import figures, measures, summary as summary_lib

DESCRIPTION = "a run's developmental atlas: LLC, CKA, attention heads, logit lens, weight statistics over its series"
findings = summary_lib.findings


@dataclasses.dataclass(frozen=True)
class Config:
    pretrain_run: str = ""           # a pretrain run folder (the quickstart's); "" with run "" = train pretrain_preset into OUT/pretrain
    pretrain_preset: str = "tiny"    # the pretrain preset trained into OUT/pretrain when no run is given
    run: str = ""                    # a run of any family (imported suite or trained here), streamed from disk
    text: str = ""                   # on run=...: text file or folder read with its tokenizer ("" = its own corpus, else Shakespeare)
    max_checkpoints: int = 0         # 0 = every checkpoint, else this many spread over the series (first and last kept)
    window: int = 0                  # tokens predicted per held-out window (lens, CKA, ICL score); 0 = the model's context
    n_windows: int = 32              # held-out windows (a multiple of batch_size)
    batch_size: int = 16             # windows per forward pass
    cka_examples: int = 256          # residual positions CKA compares (spread over the windows, the same at every checkpoint)
    cka_debiased: bool = True        # debiased CKA (unbiased HSIC, Song et al. 2012) rather than linear CKA (Kornblith et al.)
    period: int = 0                  # period P of the repeated random tokens (sequences of 2P); 0 = half the context
    n_sequences: int = 32            # repeated random sequences scored for the head scores
    icl_early: int = 0               # ICL score: the early position (0 = a tenth of the window, below icl_late)
    icl_late: int = 0                # ICL score: the late position (0 = the last of the window)
    llc_checkpoints: int = 5         # checkpoints whose LLC is estimated, spread over the series (0 = all analysed)
    llc_window: int = 32             # tokens predicted per training window of the LLC's loss
    llc_examples: int = 1024         # training windows the LLC's loss L_n averages (its minibatches are drawn from them)
    llc: SGLDConfig = SGLDConfig(draws=50, burnin=10, batch_size=8)  # the SGLD estimator's settings
    rate_per_log_step: bool = True   # "changes fastest" per unit of log(1 + step); false: per step
    n_boot: int = 1000               # bootstrap resamples of the intervals over windows and sequences
    ci_level: float = 0.95           # level of every interval
    seed: int = 0                    # windows, positions, random sequences and the SGLD chains
    chunk_size: int = 0              # checkpoints per vmapped chunk (0: from the memory budget)
    memory_budget_gb: float = 0.0    # host memory for the checkpoint chunks (0 = a quarter of free memory)

    def __post_init__(self):
        require(not (self.run and self.pretrain_run), "give run (any family) or pretrain_run, not both")
        require(self.max_checkpoints == 0 or self.max_checkpoints >= 2, "max_checkpoints must be 0 (all) or >= 2")
        require(self.llc_checkpoints == 0 or self.llc_checkpoints >= 2, "llc_checkpoints must be 0 (all) or >= 2")
        require(self.window >= 0 and self.period >= 0 and self.icl_early >= 0 and self.icl_late >= 0,
                "window, period, icl_early and icl_late must be >= 0 (0 = automatic)")
        require(self.batch_size >= 1 and self.n_windows >= 2 and self.n_windows % self.batch_size == 0,
                f"n_windows={self.n_windows} must be >= 2 and a multiple of batch_size={self.batch_size}")
        require(self.cka_examples >= 2 * self.n_windows,
                f"cka_examples={self.cka_examples} must be at least 2 per window ({2 * self.n_windows})")
        require(self.n_sequences >= 2, f"n_sequences={self.n_sequences} must be >= 2 (the intervals resample them)")
        require(self.llc_window >= 1 and self.llc_examples >= self.llc.batch_size,
                f"llc_window must be >= 1 and llc_examples={self.llc_examples} at least one minibatch "
                f"(llc.batch_size={self.llc.batch_size})")
        require(self.n_boot >= 100, f"n_boot={self.n_boot} must be >= 100")
        require(0.5 < self.ci_level < 1, f"ci_level={self.ci_level} must lie in (0.5, 1)")
        require(self.chunk_size >= 0 and self.memory_budget_gb >= 0, "chunk_size and memory_budget_gb must be >= 0")

    def unused(self) -> dict[str, str]:
        """Keys the other settings leave without effect: setting one is refused."""
        keys = {"pretrain_preset": "a run is given, so no pretrain preset is trained"} if self.pretrain_run or self.run else {}
        if not self.run:
            keys["text"] = "text is read on run=...; a pretrain run is read on its own corpus"
        return keys


PRESETS = {
    "tiny": Config(),
    # a Pythia-style suite imported with `experiments import` (--set run=SUITE): longer windows,
    # 32 of its checkpoints, the SGLD settings of devinterp's language-model examples ([choice])
    "pythia": Config(max_checkpoints=32, window=128, n_windows=64, batch_size=8, cka_examples=512, period=64,
                     n_sequences=32, llc_checkpoints=8, llc_window=128, llc_examples=2048,
                     llc=SGLDConfig(eps=1e-3, gamma=100.0, chains=4, draws=200, burnin=50, batch_size=16)),
}


def resolve(config: Config) -> dict:
    """The run analysed (checked: model, tokenizer, a pretrain series; or the preset trained),
    the windows' and sequences' lengths against its context, and the study's keys."""
    if config.run:
        ref = suite.run_reference(config.run)
        suite.check_text(config.text)
    else:
        ref = pretrain.pretrain_reference(config.pretrain_run, config.pretrain_preset)
    model = ref["model"] if isinstance(ref["model"], dict) else dataclasses.asdict(ref["model"])
    shapes = measures.shapes(config, model["context"])
    folded = {"run", "pretrain_run", "pretrain_preset"} | set(config.unused())
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in folded}
    return {"run": {k: v for k, v in ref.items() if k != "steps"}, "shapes": shapes, "study": study}


def run_dir_of(config: Config, folder: RunFolder) -> Path:
    """The run analysed: `run`, `pretrain_run`, or the preset trained (or reused) in OUT/pretrain."""
    if config.run or config.pretrain_run:
        return Path(config.run or config.pretrain_run)
    return pretrain.ensure_pretrain(folder.sub("pretrain"), preset=config.pretrain_preset)


def run(config: Config, folder: RunFolder) -> dict:
    """Inputs, the forward measures of every checkpoint, the LLC of the chosen ones, the
    summary, the metrics rows, the arrays (measures.npz) and the figures."""
    t0 = time.perf_counter()
    set_memory_budget(int(config.memory_budget_gb * 2**30))
    run_dir = run_dir_of(config, folder)
    with tqdm(total=3, desc="development", unit="pass") as bar:
        data = measures.inputs(config, run_dir)
        bar.set_postfix_str("forward measures and weights")
        series = measures.forward_pass(config, run_dir, data)
        bar.update()
        bar.set_postfix_str(f"LLC ({config.llc.chains} chains x {config.llc.steps} steps a checkpoint)")
        llc = measures.llc_pass(config, run_dir, data, series["steps"])
        bar.update()
        bar.set_postfix_str("CKA intervals, summary, figures")
        summary, cka = summary_lib.summarize(config, series, llc, data)
        summary_lib.log_rows(folder, summary)
        measures.save_arrays(folder, series, llc, cka)
        figures.plot_all(folder, series, llc, summary, cka)
        bar.update()
    summary.update({"wall_s": time.perf_counter() - t0, "forward_s": series["seconds"],
                    "weights_s": series["weights_seconds"], "llc_s": llc["seconds"],
                    "max_resident_checkpoints": int(max(series["max_resident"], llc["max_resident"]))})
    return summary
