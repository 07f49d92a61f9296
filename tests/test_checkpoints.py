import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import checkpoints as ck
from dynamics import stacks
from models.errors import OntogenyError
from models import gpt


def test_save_restore_round_trip(tmp_path):
    params = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(4, np.float32)}}
    series = ck.Series(tmp_path, "pretrain")
    series.save(0, params, {"rng": np.array([1, 2], np.uint32)}, {"val_loss": 1.5})
    restored, state, meta = series.restore(0, state_target={"rng": np.zeros(2, np.uint32)})
    chex.assert_trees_all_equal(restored, params)
    chex.assert_trees_all_equal(state, {"rng": np.array([1, 2], np.uint32)})
    from dynamics.hf_import import checksum  # recorded for load_stack(..., verify=True)

    assert meta == {"step": 0, "stage": "pretrain", "val_loss": 1.5, "checksum": checksum(params)}
    with pytest.raises(OntogenyError, match="never overwritten"):
        series.save(0, params)


def test_load_stack_equals_per_checkpoint_loading(micro_run):
    steps, stacked = ck.load_stack(micro_run)
    series = ck.Series(micro_run, "pretrain", create=False)
    assert list(steps) == series.steps() == [0, 1, 2, 4, 8, 16, 20, 40]
    for t, step in enumerate(steps):
        chex.assert_trees_all_equal(series.restore_params(int(step)), stacks.unstack_tree(stacked, t))
    sub_steps, sub = ck.load_stack(micro_run, steps=[4, 40])
    np.testing.assert_array_equal(sub["wte"][1], stacked["wte"][-1])
    with pytest.raises(OntogenyError, match="not in"):
        ck.load_stack(micro_run, steps=[3])


@pytest.fixture(scope="module")
def resid_loop(micro_run):
    """A residual-stream function, the stacked series, and its reference: a jitted loop over T."""
    config = ck.load_model_config(micro_run)
    steps, stacked = ck.load_stack(micro_run)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, config.context)))

    def resid(params, tokens):
        return gpt.apply(params, tokens, config, capture=("resid",))[1]["resid"]

    one = jax.jit(resid)
    loop = np.stack([one(stacks.unstack_tree(stacked, t), tokens) for t in range(len(steps))])
    return config, stacked, tokens, resid, loop


@pytest.mark.parametrize("chunk", [None, 1, 3, 8])
def test_map_stack_equals_a_loop(resid_loop, chunk):
    config, stacked, tokens, resid, loop = resid_loop
    vmapped = ck.map_stack(resid, stacked, tokens, chunk_size=chunk)
    chex.assert_shape(vmapped, (len(loop), config.n_layer, 2, config.context, config.d_model))
    chex.assert_trees_all_close(vmapped, loop, atol=2e-5)


def test_auto_chunk_respects_the_memory_budget(micro_run):
    _, stacked = ck.load_stack(micro_run)
    fn = lambda p: jnp.zeros((1000, 1000))  # 4 MB out per checkpoint
    param_bytes = sum(x[0].nbytes for x in jax.tree.leaves(stacked))
    per_checkpoint = param_bytes + 4 * 4_000_000  # params + output + 3 x output of scratch
    assert ck.auto_chunk_size(fn, stacked, max_bytes=10 * per_checkpoint) == 8  # all T=8 fit
    assert ck.auto_chunk_size(fn, stacked, max_bytes=3 * per_checkpoint - 1) == 2
    assert ck.auto_chunk_size(fn, stacked, max_bytes=1) == 1


def test_auto_chunk_counts_xla_temporaries_of_an_in_memory_stack():
    """A function whose temporaries dwarf its inputs and outputs (as NeuroMFA's box counting on a
    distance matrix): above `scratch_above` bytes of stack, the chunk counts XLA's temporary bytes
    for one checkpoint (here two 512 x 512 float32 matrices at least), below it only the outputs."""
    stacked = {"x": jnp.ones((8, 512))}

    def fn(p):
        outer = jnp.outer(p["x"], p["x"])
        return jnp.linalg.norm(outer @ outer)

    temporaries = 2 * 512 * 512 * 4
    assert ck.auto_chunk_size(fn, stacked, max_bytes=3 * temporaries) == 8  # small stack: outputs only
    chunk = ck.auto_chunk_size(fn, stacked, max_bytes=3 * temporaries, scratch_above=0)
    assert 1 <= chunk <= 3


def test_corrupt_checkpoint_gives_a_clear_error(micro_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(micro_run, run)
    damaged = run / "checkpoints" / "pretrain" / "4" / "params"
    for f in damaged.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    with pytest.raises(OntogenyError, match=r"checkpoint .*4 is corrupt or unreadable.*delete that step folder"):
        ck.load_stack(run)


def test_missing_series_and_config(tmp_path):
    with pytest.raises(OntogenyError, match="no 'pretrain' checkpoints"):
        ck.load_stack(tmp_path)
    with pytest.raises(OntogenyError, match="not a GPT model config"):
        ck.load_model_config(tmp_path)


def test_stages_concatenate(micro_run, tmp_path):
    run = tmp_path / "staged"
    shutil.copytree(micro_run, run)
    params = ck.Series(run, "pretrain", create=False).restore_params(40)
    sft = ck.Series(run, "sft")
    for s in (0, 5):
        sft.save(s, params)
    labels, stacked = ck.load_stages(run, ["pretrain", "sft"])
    assert labels[-3:] == [("pretrain", 40), ("sft", 0), ("sft", 5)]
    assert stacked["wte"].shape[0] == 10
