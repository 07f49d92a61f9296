"""`map_stack` over a series left on disk (`open_stack`): the same result as the in-memory
stack, read one chunk at a time with the next prefetched, so at most two chunks are resident."""
from __future__ import annotations

from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import checkpoints as ck
from dynamics import stacks
from dynamics.errors import OntogenyError

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
    assert disk.max_resident == 2
    assert ck.auto_chunk_size(f, disk, x, max_bytes=1 << 30) == 7
    ck.set_memory_budget(max_bytes=tight)
    try:
        assert ck.auto_chunk_size(f, disk, x) == 1
    finally:
        ck.set_memory_budget()


def test_imported_suite_streams_through_models_apply(tmp_path):
    import models
    from experiments.import_suite import main

    assert main(["--from", str(HF / "neox_rot25_parallel"), "--out", str(tmp_path / "run")]) == 0
    config = ck.load_model_config(tmp_path / "run")
    tokens = np.load(HF / "tokens.npy")[:, :8] % config.vocab_size
    logits = lambda p, t: models.apply(p, t, config)[0]
    _, stacked = ck.load_stack(tmp_path / "run")
    _, disk = ck.open_stack(tmp_path / "run")
    np.testing.assert_allclose(ck.map_stack(logits, disk, tokens, chunk_size=1),
                               ck.map_stack(logits, stacked, tokens, chunk_size=1), atol=1e-5)
    assert disk.max_resident == 2


def test_scratch_bytes_count_a_large_intermediate():
    """XLA's temporary bytes for one checkpoint see logits the outputs do not show."""
    import jax

    def summed_log_softmax(p, x):
        return jax.nn.log_softmax(x @ p["w"]).sum()

    one = {"w": jax.ShapeDtypeStruct((16, 20000), np.float32)}
    x = np.ones((64, 16), np.float32)
    assert stacks.scratch_bytes(summed_log_softmax, one, (x,)) >= 64 * 20000 * 4 * 0.9
