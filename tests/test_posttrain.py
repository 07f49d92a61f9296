import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import posttrain as pt
from dynamics import train as train_lib
from dynamics.checkpoints import Series, load_stages
from dynamics.runlog import RunFolder
from models import gpt

CFG = gpt.GPTConfig(vocab_size=8, context=8, n_layer=1, n_head=2, d_model=16)


def test_pack_masks_exactly_the_response_targets():
    tokens, mask = pt.pack([np.array([5, 6]), np.array([1])], [np.array([2, 3, 4]), np.array([7])], length=6)
    np.testing.assert_array_equal(tokens, [[5, 6, 2, 3, 4, 0, 0], [1, 7, 0, 0, 0, 0, 0]])
    batch = pt.as_batch(tokens, mask)
    for n, (n_prompt, n_resp) in enumerate([(2, 3), (1, 1)]):  # target i is token i+1
        expected = [1.0 if n_prompt <= i + 1 < n_prompt + n_resp else 0.0 for i in range(6)]
        np.testing.assert_array_equal(mask[n], expected)
    np.testing.assert_array_equal(batch["targets"][0][mask[0] > 0], [2, 3, 4])
    np.testing.assert_array_equal(batch["targets"][1][mask[1] > 0], [7])
    with pytest.raises(Exception, match="exceeds the context"):
        pt.pack([np.arange(5)], [np.arange(5)], length=6)


def test_sequence_logprob_matches_a_loop():
    params = gpt.init_params(CFG, jax.random.PRNGKey(0))
    tokens, mask = pt.pack([np.array([1, 2])], [np.array([3, 4])], length=5)
    ours = float(pt.sequence_logprob(params, jnp.asarray(tokens), jnp.asarray(mask), CFG)[0])
    total = 0.0
    for t in (1, 2):  # predict tokens[2]=3 from prefix [1,2], tokens[3]=4 from [1,2,3]
        logits, _ = gpt.apply(params, jnp.asarray(tokens[:, : t + 1]), CFG)
        total += float(jax.nn.log_softmax(logits[0, -1])[tokens[0, t + 1]])
    assert ours == pytest.approx(total, abs=1e-5)


def test_dpo_loss_formula_and_training_prefers_chosen():
    params = gpt.init_params(CFG, jax.random.PRNGKey(1))
    prompts = [np.array([1, 2])] * 4
    chosen, c_mask = pt.pack(prompts, [np.array([3])] * 4, length=4)
    rejected, r_mask = pt.pack(prompts, [np.array([5])] * 4, length=4)
    batch = {"chosen": chosen, "chosen_mask": c_mask, "rejected": rejected, "rejected_mask": r_mask,
             "ref_chosen": pt.reference_logprobs(params, chosen, c_mask, CFG),
             "ref_rejected": pt.reference_logprobs(params, rejected, r_mask, CFG)}
    loss = pt.dpo_loss(CFG, beta=0.5)
    assert float(loss(params, batch, None)) == pytest.approx(np.log(2), abs=1e-5)  # policy == reference
    tc = train_lib.TrainConfig(steps=30, batch_size=4, lr=1e-2, warmup=0, weight_decay=0.0)
    opt = train_lib.scheduled_adamw(tc)
    step = train_lib.make_train_step(loss, opt, dropout=False)
    state = train_lib.init_state(params, opt, 0)
    for _ in range(30):
        state, m = step(state, batch)
    margin = (pt.sequence_logprob(state["params"], chosen, c_mask, CFG) -
              pt.sequence_logprob(state["params"], rejected, r_mask, CFG))
    assert float(m["loss"]) < 0.2 and float(margin.min()) > 2.0


def test_group_advantages_match_numpy():
    r = np.array([[1, 0, 0, 1], [0, 0, 0, 1.0]])
    expected = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(pt.group_advantages(r), expected, rtol=1e-5)
    np.testing.assert_allclose(pt.group_advantages(np.ones((1, 4))), 0.0)  # no signal, no push


def test_grpo_gradient_is_the_policy_gradient_on_policy():
    """With ratio 1 and no KL, grad = -mean_n(A_n * mean_t grad log p) (REINFORCE with baseline)."""
    params = gpt.init_params(CFG, jax.random.PRNGKey(2))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 8, (4, 6)), jnp.int32)
    mask = jnp.asarray(np.tile([0, 0, 1, 1, 1.0], (4, 1)))
    adv = jnp.array([1.0, -1.0, 0.5, -0.5])
    logp = pt.token_logprobs(params, tokens, CFG)
    batch = {"tokens": tokens, "mask": mask, "advantages": adv, "old_logp": logp, "ref_logp": logp}
    g = jax.grad(pt.grpo_loss(CFG, pt.GRPOConfig(kl_beta=0.0)))(params, batch, None)
    reinforce = lambda p: -jnp.mean(adv * (pt.token_logprobs(p, tokens, CFG) * mask).sum(-1) / 3.0)
    g_ref = jax.grad(reinforce)(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_grpo_raises_a_verifiable_reward_and_extends_the_series(tmp_path):
    params = gpt.init_params(CFG, jax.random.PRNGKey(3))
    folder = RunFolder(tmp_path / "run")
    Series(folder.root, "pretrain").save(0, params)
    rl = pt.GRPOConfig(group_size=8, prompts_per_step=4, max_new_tokens=1)
    prompt_fn = lambda step: (np.tile(np.array([[1, 2]], np.int32), (4, 1)), np.full(4, 6))
    reward_fn = lambda completions, answers: (completions[:, 0] == answers).astype(np.float32)
    rollout = pt.make_rollout(CFG, rl, reward_fn, prompt_fn, seed=0)
    tc = train_lib.TrainConfig(steps=25, batch_size=32, lr=2e-2, warmup=0, weight_decay=0.0, log_every=1,
                               log_checkpoints_until=16, checkpoint_every=0)
    opt = train_lib.scheduled_adamw(tc)
    step = train_lib.make_train_step(pt.grpo_loss(CFG, rl), opt, dropout=False)
    train_lib.run_training(folder, "rl", train_lib.init_state(params, opt, 0), step,
                           lambda s, p: rollout(s, p, params), tc, on_policy=True)
    rewards = [r["reward_mean"] for r in folder.read_metrics() if "reward_mean" in r]
    assert rewards[0] < 0.4 and np.mean(rewards[-3:]) > 0.8, rewards  # chance is 1/8
    labels, stacked = load_stages(folder.root, ["pretrain", "rl"])
    assert labels[:2] == [("pretrain", 0), ("rl", 0)] and labels[-1] == ("rl", 25)
