"""`map_stack` over a series left on disk (`open_stack`): the same result as the in-memory
stack, read one chunk at a time with the next prefetched, so at most two chunks are resident."""
from __future__ import annotations

import time
from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import checkpoints as ck
from dynamics import stacks
from models.errors import OntogenyError

HF = Path(__file__).parent / "fixtures" / "hf"


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory) -> Path:
    """Seven small checkpoints with distinct random weights."""
    run = tmp_path_factory.mktemp("stream") / "run"
    series = ck.Series(run, "pretrain")
    rng = np.random.default_rng(0)
    for step in (0, 1, 2, 4, 8, 16, 32):
        series.save(step, {"w": rng.standard_normal((4, 3)).astype(np.float32),
                           "b": {"c": rng.standard_normal(3).astype(np.float32)}})
    return run


def f(params, x_BD):
    return jnp.tanh(x_BD @ params["w"] + params["b"]["c"])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_streamed_equals_in_memory_and_a_loop(series_dir, chunk):
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    steps, stacked = ck.load_stack(series_dir)
    steps_d, disk = ck.open_stack(series_dir)
    np.testing.assert_array_equal(steps, steps_d)
    loop = np.stack([np.tanh(x @ stacked["w"][t] + stacked["b"]["c"][t]) for t in range(len(steps))])
    streamed = ck.map_stack(f, disk, x, chunk_size=chunk)
    chex.assert_shape(streamed, (len(steps), 5, 3))
    chex.assert_trees_all_close(streamed, ck.map_stack(f, stacked, x, chunk_size=chunk), atol=1e-6)
    chex.assert_trees_all_close(streamed, loop, atol=1e-5)
    # the chunk being computed plus the one prefetched, never the whole series
    assert disk.max_resident <= min(2 * chunk, len(steps)) and disk.resident == 0
    if chunk <= 3:
        assert disk.max_resident < len(steps)


def test_streamed_leaf_inside_a_tree_and_a_subset(series_dir):
    """A StackOnDisk beside in-memory stacked arrays (as the crosscoder metrics pass them)."""
    _, disk = ck.open_stack(series_dir, steps=[2, 8, 32])
    _, stacked = ck.load_stack(series_dir, steps=[2, 8, 32])
    shift = np.arange(3, dtype=np.float32)[:, None] * np.ones((3, 3), np.float32)
    g = lambda p, x: f(p["model"], x) + p["shift"]
    x = np.ones((2, 4), np.float32)
    got = ck.map_stack(g, {"model": disk, "shift": shift}, x, chunk_size=2)
    want = ck.map_stack(g, {"model": stacked, "shift": shift}, x, chunk_size=2)
    chex.assert_trees_all_close(got, want, atol=1e-6)
    with pytest.raises(OntogenyError, match="not in"):
        ck.open_stack(series_dir, steps=[3])


def test_budget_picks_the_chunk(series_dir):
    """A budget of about one checkpoint's bytes per chunk streams one at a time (two resident);
    a generous one takes the series in one chunk."""
    _, disk = ck.open_stack(series_dir)
    x = np.ones((5, 4), np.float32)
    one = stacks.tree_bytes(disk.template())
    out = 5 * 3 * 4
    tight = 2 * one + 4 * out
    assert ck.auto_chunk_size(f, disk, x, max_bytes=tight) == 1
    ck.map_stack(f, disk, x, max_bytes=tight)
    assert 1 <= disk.max_resident <= 2  # 2 once the prefetch starts before the chunk is done
    _, slow = ck.open_stack(series_dir)
    for _part, _n in stacks.chunks(slow, 1, len(slow)):
        time.sleep(0.05)  # a caller computing: the next checkpoint is read meanwhile, never a third
    assert slow.max_resident == 2 and slow.resident == 0
    assert ck.auto_chunk_size(f, disk, x, max_bytes=1 << 30) == 7
    ck.set_memory_budget(max_bytes=tight)
    try:
        assert ck.auto_chunk_size(f, disk, x) == 1
    finally:
        ck.set_memory_budget()


def test_imported_suite_streams_through_models_apply(tmp_path):
    import models
    from experiments.tools.import_suite import main

    assert main(["--from", str(HF / "neox_rot25_parallel"), "--out", str(tmp_path / "run")]) == 0
    config = ck.load_model_config(tmp_path / "run")
    tokens = np.load(HF / "tokens.npy")[:, :8] % config.vocab_size
    logits = lambda p, t: models.apply(p, t, config)[0]
    _, stacked = ck.load_stack(tmp_path / "run")
    _, disk = ck.open_stack(tmp_path / "run")
    np.testing.assert_allclose(ck.map_stack(logits, disk, tokens, chunk_size=1),
                               ck.map_stack(logits, stacked, tokens, chunk_size=1), atol=1e-5)
    assert 1 <= disk.max_resident <= 2  # the bound; the prefetch itself is tested above


def test_scratch_bytes_count_a_large_intermediate():
    """XLA's temporary bytes for one checkpoint see logits the outputs do not show."""
    import jax

    def summed_log_softmax(p, x):
        return jax.nn.log_softmax(x @ p["w"]).sum()

    one = {"w": jax.ShapeDtypeStruct((16, 20000), np.float32)}
    x = np.ones((64, 16), np.float32)
    assert stacks.scratch_bytes(summed_log_softmax, one, (x,)) >= 64 * 20000 * 4 * 0.9


def test_peak_rss_mark_resets_and_sees_an_allocation():
    base = stacks.reset_peak_rss()
    if base is None:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    block = np.ones(64 << 20, np.uint8)  # 64 MiB, touched
    assert stacks.peak_rss() - base >= 60 << 20
    del block
    now = stacks.reset_peak_rss()
    assert stacks.peak_rss() - now < 32 << 20


def test_a_big_stack_measures_its_first_checkpoint_and_shrinks_the_chunk(monkeypatch):
    """On a stack of 64 MiB or more, checkpoint 0 runs alone and its measured cost sets the chunk
    (never larger than the estimate's: `min` in map_stack); the result still equals a loop.
    Without a resettable peak nothing is measured."""
    stacked = {"w": np.random.default_rng(0).normal(size=(9, 1024, 1024 * 2)).astype(np.float32)}  # 72 MiB
    x = np.ones((3, 1024), np.float32)

    def fn(p, x):
        return jnp.tanh(x @ p["w"]).sum(-1)

    want = np.stack([np.asarray(fn({"w": stacked["w"][c]}, x)) for c in range(9)])
    monkeypatch.setattr(ck, "_MEASURED", {})
    np.testing.assert_allclose(ck.map_stack(fn, stacked, x, max_bytes=64 << 20), want, rtol=1e-4, atol=1e-4)
    if stacks.reset_peak_rss() is not None:
        assert len(ck._MEASURED) == 1 and min(ck._MEASURED.values()) >= 1
    monkeypatch.setattr(ck, "_MEASURED", {})
    monkeypatch.setattr(ck, "reset_peak_rss", lambda: None)
    np.testing.assert_allclose(ck.map_stack(fn, stacked, x, max_bytes=1 << 30), want, rtol=1e-4, atol=1e-4)
    assert ck._MEASURED == {}
