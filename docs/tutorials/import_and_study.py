"""Import a checkpoint suite and run the studies on it.

    python docs/tutorials/import_and_study.py [--from SUITE] [--text FILE] [--out DIR]

SUITE is a folder of Hugging Face checkpoint folders, one per step (`step0/`, `step1000/`, ...:
config.json, model.safetensors, tokenizer.json), such as the Pythia revisions you downloaded.
The default is the tiny GPT-NeoX suite the tests use (random weights, 3 steps), so the script
runs in seconds; the real suite is one flag away (see docs/guides/importing-suites.md):

    python -m experiments import --model EleutherAI/pythia-160m --steps ge2025 --dtype bfloat16 --out runs/pythia-160m

Each step below is a command you can type; the script runs them in one Python process (so JAX
starts once) and then reads the summaries back.
"""
import argparse
import json
import re
import shlex
from pathlib import Path

from experiments.__main__ import cli
from experiments.cli import registry

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hf" / "neox_rot25_parallel"


def experiments(*args: str) -> None:
    print("$ python -m experiments " + shlex.join(args), flush=True)
    code = cli(list(args))
    if code != 0:
        raise SystemExit(f"the command above exited {code}")


def write_question_labels(text: str, path: str, n: int = 200) -> None:
    """A labels file for `probe`: one JSON row a line, {"text": ..., "label": ...}. Here each
    sentence of the text without its final mark, labelled by that mark (question or statement)."""
    sentences = re.findall(r"[^.?!]{20,}[.?]", " ".join(text.split()))
    questions = [s for s in sentences if s.endswith("?")][: n // 2]
    statements = [s for s in sentences if s.endswith(".")][: len(questions)]
    with open(path, "w") as f:
        for s in questions + statements:
            f.write(json.dumps({"text": s[:-1].strip(), "label": "question" if s.endswith("?") else "statement"}) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", default=str(FIXTURE), help="folder of stepN/ checkpoint folders")
    parser.add_argument("--text", help="text to score the checkpoints on (default: Shakespeare's held-out plays)")
    parser.add_argument("--out", default="runs/tutorial-suite")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = args.text
    if not text:  # an imported suite has no corpus of its own: give the studies a text
        from dynamics.data import load_shakespeare

        text = str(out / "held_out.txt")
        Path(text).write_text(load_shakespeare().val_text[:40_000])

    run = str(out / "suite")
    experiments("import", "--from", args.source, "--out", run)        # resumes if already imported
    # every checkpoint's loss and next-token accuracy on the text
    experiments("evaluate", "--set", f"run={run}", "--set", f"text={text}", "--set", "n_windows=8",
                "--out", str(out / "evaluate"))
    # linear probes on every layer of every checkpoint, on labels you write: is this sentence a question?
    labels = str(out / "questions.jsonl")
    write_question_labels(Path(text).read_text(), labels)
    experiments("probe", "--set", f"run={run}", "--set", f"labels={labels}", "--set", "window=16",
                "--out", str(out / "probe"))
    experiments("report", str(out))                                     # one offline page: DIR/report.html

    # every run folder has the same files: summary.json (headlines), metrics.jsonl (rows), figures/
    def rows(name):
        return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]

    probe = json.loads((out / "probe" / "summary.json").read_text())
    print("step   loss   probe accuracy (best layer)")
    for loss, acc in zip(rows("evaluate"), rows("probe")):
        print(f"{loss['step']:>4}  {loss['loss']:.3f}  {acc['acc_test'][probe['best_layer']]:.2f}")
    print(*registry.findings("probe", probe), sep="\n")
    print(f"every study's figures and findings on one page: {out / 'report.html'}")
    return rows("evaluate"), probe


if __name__ == "__main__":
    main()
