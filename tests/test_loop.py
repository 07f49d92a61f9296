"""The one training loop (dynamics.loop): strides, sync steps, the NaN stop, signals, checkpoints."""
import os
import signal

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.errors import OntogenyError
from dynamics.loop import Checkpoints, Diverged, Interrupted, run_loop


def counting_step(state, batch):
    """state["x"] accumulates the batches; the loss is the running total."""
    x = state["x"] + batch
    return {**state, "x": x}, {"loss": x}


def test_strides_sync_steps_and_hooks_follow_a_plain_loop():
    """A stride of 3 from step 2 to 14 visits 2, 5, 8, 11 (then one call of 3 to 14); syncs happen at
    multiples of sync_every that a call lands on, at sync_at, and at the end."""
    synced, after = [], []
    state = run_loop({"x": 0}, counting_step, lambda s: s, steps=14, start=2, stride=lambda s: 3, sync_every=4,
                     sync_at={11}, on_sync=lambda s, m, tps: synced.append((s, int(m["loss"]))),
                     after_step=lambda s, st: after.append(s), progress=False)
    assert after == [5, 8, 11, 14]
    assert state["x"] == 2 + 5 + 8 + 11
    assert synced == [(8, 2 + 5), (11, 2 + 5 + 8), (14, 26)]


def test_non_finite_loss_raises_diverged_with_the_hint():
    def step(state, batch):
        loss = jnp.where(batch >= 5, jnp.nan, 1.0)
        return state, {"loss": jnp.stack([loss, loss])}   # two members, both non-finite from step 5

    with pytest.raises(Diverged, match=r"loss became nan at step 6 of 'toy'; lower lr") as e:
        run_loop({}, step, lambda s: s, steps=10, desc="toy", sync_every=2,
                 diverged_hint=lambda s: "lower lr", progress=False)
    assert e.value.step == 6 and isinstance(e.value, OntogenyError)
    # one finite member keeps the loop going: the trainer handles the failed one
    mixed = lambda st, b: (st, {"loss": jnp.asarray([jnp.nan, 1.0])})
    run_loop({}, mixed, lambda s: s, steps=4, sync_every=1, progress=False)


def test_signal_saves_a_resume_point_that_restores_exactly(tmp_path):
    """SIGTERM during step 3 stops after it; the resume point holds that state (optax NamedTuples
    included), scheduled steps are kept apart, and the resumed loop ends where an uninterrupted one does."""
    optimizer = optax.adam(0.1)
    params = {"w": jnp.arange(3.0)}
    fresh = {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}

    def make_step(kill_at):
        def step(state, batch):
            if batch == kill_at:
                os.kill(os.getpid(), signal.SIGTERM)
            grads = {"w": state["params"]["w"] - batch}
            updates, opt_state = optimizer.update(grads, state["opt_state"])
            return ({"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
                     "step": state["step"] + 1}, {"loss": jnp.sum(grads["w"] ** 2)})
        return step

    ckpt = Checkpoints(tmp_path, "toy", schedule={1, 5})
    save_scheduled = lambda s, st: ckpt.save(s, st) if s in ckpt.schedule else None
    with pytest.raises(Interrupted) as stopped:
        run_loop(fresh, make_step(kill_at=2), lambda s: s, steps=8, progress=False, after_step=save_scheduled,
                 on_interrupt=ckpt.save_resume)
    assert stopped.value.step == 3 and ckpt.steps() == [1, 3] and ckpt.last_saved() == 1
    state, start, _ = Checkpoints(tmp_path, "toy").restore_latest(fresh)
    assert start == 3 and int(state["step"]) == 3 and type(state["opt_state"]) is type(fresh["opt_state"])
    resumed = run_loop(state, make_step(kill_at=None), lambda s: s, steps=8, start=start, progress=False,
                       after_step=save_scheduled)
    reference = run_loop(fresh, make_step(kill_at=None), lambda s: s, steps=8, progress=False)
    np.testing.assert_array_equal(resumed["params"]["w"], reference["params"]["w"])
    assert ckpt.steps() == [1, 3, 5]
    ckpt.clear_resume()
    assert ckpt.steps() == [1, 5] and ckpt.latest() == 5
