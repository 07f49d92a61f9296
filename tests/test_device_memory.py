"""Device-aware memory budgets, on a CPU with a faked accelerator (`stacks.device_free_bytes`
patched): the chunk of `map_stack` fits the device's budget and the host's, the crosscoders'
reservation comes out of the device's memory, and a CPU keeps its host-only arithmetic."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import checkpoints as ck
from dynamics import stacks

OUT = 1000 * 1000 * 4                 # bytes of the test function's output per checkpoint
PARAMS = 8 * 256 * 4                  # bytes of one checkpoint of the test stack


@pytest.fixture
def stacked():
    return {"w": jnp.ones((8, 8, 256))}   # C = 8 checkpoints of 8 KiB


def big_output(p):
    return jnp.zeros((1000, 1000)) + p["w"].sum()


@pytest.fixture(autouse=True)
def default_budget():
    ck.set_memory_budget()
    yield
    ck.set_memory_budget()


def fake_device(monkeypatch, free_bytes):
    monkeypatch.setattr(stacks, "device_free_bytes", lambda: free_bytes)


def test_a_cpu_reports_no_device_memory_and_keeps_the_host_arithmetic(stacked):
    assert stacks.device_free_bytes() is None and stacks.device_peak_bytes() is None
    assert ck.device_budget_bytes() is None
    per_ckpt = PARAMS + 4 * OUT                                   # inputs + outputs + 3 x outputs of scratch
    assert ck.auto_chunk_size(big_output, stacked, max_bytes=3 * per_ckpt) == 3
    assert ck.auto_chunk_size(big_output, stacked, max_bytes=3 * per_ckpt - 1) == 2


def test_the_device_budget_bounds_the_chunk_where_the_host_has_plenty(monkeypatch, stacked):
    device_per = PARAMS + 4 * OUT                                 # on the device: inputs, outputs, scratch
    fake_device(monkeypatch, free_bytes=2 * 3 * device_per)       # half of it is the budget: 3 checkpoints
    assert ck.device_budget_bytes() == 3 * device_per
    assert ck.auto_chunk_size(big_output, stacked, max_bytes=1 << 40) == 3
    assert ck.auto_chunk_size(big_output, stacked, max_bytes=1 << 40, n_devices=2) == 6  # spread over 2 devices
    ck.set_memory_budget(device_fraction=0.25)
    assert ck.auto_chunk_size(big_output, stacked, max_bytes=1 << 40) == 1


def test_the_host_budget_still_bounds_the_chunk_on_an_accelerator(monkeypatch, stacked):
    fake_device(monkeypatch, free_bytes=1 << 40)
    host_per = PARAMS + 2 * OUT                                   # the chunk read in, the outputs brought back
    assert ck.auto_chunk_size(big_output, stacked, max_bytes=5 * host_per) == 5
    assert ck.auto_chunk_size(big_output, stacked, max_bytes=5 * host_per - 1) == 4
    assert ck.auto_chunk_size(big_output, stacked, max_bytes=1) == 1  # never below one checkpoint


def test_map_stack_under_a_tight_device_budget_equals_a_loop(monkeypatch, stacked):
    stacked = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 256)), jnp.float32)}
    fn = lambda p, x: jnp.tanh(p["w"] @ x)                       # [8, 4] per checkpoint
    x = jnp.ones((256, 4))
    fake_device(monkeypatch, free_bytes=2 * 3 * (PARAMS + 4 * 8 * 4 * 4))
    assert ck.auto_chunk_size(fn, stacked, x, max_bytes=1 << 40) == 3
    loop = np.stack([fn(stacks.unstack_tree(stacked, c), x) for c in range(8)])
    np.testing.assert_allclose(ck.map_stack(fn, stacked, x), loop, rtol=1e-6)


def test_reserved_work_comes_out_of_the_device_on_an_accelerator_and_the_host_on_a_cpu(monkeypatch):
    ck.set_memory_budget(1000)
    assert ck.reserve_memory(600) == 1000                          # a CPU: the host budget shrinks
    assert ck.memory_budget_bytes() == 400 and ck.device_budget_bytes() is None
    ck.set_memory_budget(1000)
    assert ck.reserve_memory(900) == 1000 and ck.memory_budget_bytes() == 250  # at least a quarter stays

    fake_device(monkeypatch, free_bytes=8000)
    ck.set_memory_budget(1000)
    assert ck.reserve_memory(600) == 4000                          # half the device's free memory
    assert ck.device_budget_bytes() == 3400 and ck.memory_budget_bytes() == 1000  # the host keeps its budget
    monkeypatch.setattr(stacks, "device_free_bytes", lambda: 100)  # the training allocates: the budget is fixed
    assert ck.device_budget_bytes() == 3400
    ck.set_memory_budget()
    assert ck.device_budget_bytes() == 50


def test_outputs_budget_needs_one_checkpoints_outputs_to_fit_the_device(monkeypatch):
    ck.set_memory_budget(10_000)
    assert ck.outputs_budget_bytes(8) == 10_000
    fake_device(monkeypatch, free_bytes=1000)
    assert ck.outputs_budget_bytes(8) == 8 * 500
    assert ck.outputs_budget_bytes(100) == 10_000


def test_device_statistics_are_read_from_jax(monkeypatch):
    class Device:
        platform = "gpu"

        def __init__(self, limit, used, peak):
            self.stats = {"bytes_limit": limit, "bytes_in_use": used, "peak_bytes_in_use": peak}

        def memory_stats(self):
            return self.stats

    monkeypatch.setattr(jax, "local_devices", lambda: [Device(100, 30, 50), Device(100, 60, 70)])
    assert stacks.on_accelerator()
    assert stacks.device_free_bytes() == 40 and stacks.device_peak_bytes() == 70
    monkeypatch.setattr(jax, "local_devices", lambda: [type("D", (), {"platform": "tpu", "memory_stats": lambda s: None})()])
    assert stacks.device_free_bytes() is None
