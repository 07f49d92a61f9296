"""`python -m experiments bench data`: generate a text corpus, tokenize it into the token cache,
stream training batches from the memmap; print throughput and peak RSS.

Size: `ONTOGENY_BENCH_DATA_MB` (default 1024, i.e. ~1 GB; 100 with --quick); tokenizer:
`ONTOGENY_BENCH_TOKENIZER` (default bpe:4096). Tokenizing and streaming run in a child
process so its peak RSS is theirs alone (generation writes the files block by block).
Everything lives in a temporary folder, removed afterwards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from dynamics import data
path, tokenizer, n_batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
corpus = data.load_corpus(data.DataConfig(path=path, tokenizer=tokenizer, val_fraction=0.05))
t1 = time.perf_counter()
data.load_corpus(data.DataConfig(path=path, tokenizer=tokenizer, val_fraction=0.05))
t2 = time.perf_counter()
for step in range(n_batches):
    x, y = data.get_batch(corpus.train_ids, 0, step, 64, 256)
t3 = time.perf_counter()
print(json.dumps({"tokenize_s": t1 - t0, "cached_load_s": t2 - t1, "stream_s": t3 - t2,
                  "train_tokens": int(corpus.train_ids.size), "val_tokens": int(corpus.val_ids.size),
                  "vocab_size": corpus.tokenizer.vocab_size, "dtype": str(corpus.train_ids.dtype),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(folder: Path, n_bytes: int, file_bytes: int = 32 << 20, seed: int = 0) -> int:
    """Zipf-distributed words from a 20k-word vocabulary, in files of ~file_bytes; returns bytes written."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(20_000)])
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    p /= p.sum()
    written, k = 0, 0
    while written < n_bytes:
        with open(folder / f"doc{k:05d}.txt", "w") as f:
            size = 0
            while size < min(file_bytes, n_bytes - written):
                words = vocab[rng.choice(len(vocab), 200_000, p=p)]
                words[rng.random(len(words)) < 0.05] = "\n"  # paragraph-ish line breaks
                text = " ".join(words)[:min(file_bytes, n_bytes - written) - size]
                f.write(text)
                size += len(text)
        written, k = written + size, k + 1
    return written


def bench(quick: bool = False) -> dict:
    mb = int(os.environ.get("ONTOGENY_BENCH_DATA_MB", 100 if quick else 1024))
    tokenizer = os.environ.get("ONTOGENY_BENCH_TOKENIZER", "bpe:4096")
    n_batches = 2000
    with tempfile.TemporaryDirectory(prefix="ontogeny-bench-data-") as tmp:
        tmp = Path(tmp)
        (tmp / "text").mkdir()
        t0 = time.perf_counter()
        n_bytes = generate(tmp / "text", mb << 20, file_bytes=min(32 << 20, (mb << 20) // 20))
        gen_s = time.perf_counter() - t0
        env = {**os.environ, "ONTOGENY_CACHE": str(tmp / "cache")}
        done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp / "text"), tokenizer, str(n_batches)],
                              env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        r = json.loads(done.stdout.strip().splitlines()[-1])
    mb_text = n_bytes / 2 ** 20
    out = {"data_text_mb": mb_text, "data_tokenizer": tokenizer, "data_generate_s": gen_s,
           "data_tokenize_s": r["tokenize_s"], "data_tokenize_mb_per_s": mb_text / r["tokenize_s"],
           "data_cached_load_s": r["cached_load_s"], "data_train_tokens": r["train_tokens"],
           "data_stream_batches_per_s": n_batches / r["stream_s"],
           "data_stream_tokens_per_s": n_batches * 64 * 256 / r["stream_s"], "data_peak_rss_mb": r["peak_rss_mb"]}
    print(f"data: {mb_text:.0f} MB of text, {tokenizer} ({r['vocab_size']} tokens, {r['dtype']}): tokenized in "
          f"{r['tokenize_s']:.1f} s ({out['data_tokenize_mb_per_s']:.1f} MB/s) into {r['train_tokens']:,} train + "
          f"{r['val_tokens']:,} val tokens; cached reload {r['cached_load_s']:.2f} s; streaming 64x256 batches from "
          f"the memmap: {out['data_stream_batches_per_s']:,.0f} batches/s "
          f"({out['data_stream_tokens_per_s'] / 1e6:.1f} M tokens/s); peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    return out
