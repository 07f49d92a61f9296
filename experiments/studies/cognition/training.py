"""The cognition study's three training stages (pretrain -> SFT -> RL), each into its own
checkpoint series of one run folder; `config` is an `experiments.studies.cognition.study.Config`."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import distributed
from dynamics import knowledge as kw
from dynamics import posttrain
from dynamics import train as train_lib
from dynamics.data import get_batch
from dynamics.runlog import RunFolder
from models import gpt


def response_length(world: kw.World, fmt: str) -> int:
    """Tokens of the longest SFT response (answer and newline)."""
    V = world.config.n_values
    return max(len(kw.answer_text(world, int(q), np.arange(V), k, fmt)) for q in world.train for k in range(V)) + 1


# ------------------------------------------------------------------------------ training
def random_items(world: kw.World, tok, config, s: int, n: int, stream: int):
    """n train items with fresh options and order, a pure function of the step: (prompts, answers)."""
    rng = np.random.default_rng([config.seed, stream, s])
    qs = rng.choice(world.train, n)
    items = [kw.draw_item(world, int(q), rng) for q in qs]
    prompts = kw.left_pad([kw.format_prompt(world, int(q), o) for q, (o, _) in zip(qs, items)], tok,
                          kw.prompt_length(world, 0))
    return prompts, [kw.answer_text(world, int(q), o, k, config.answer_format) for q, (o, k) in zip(qs, items)]


def pretrain_stage(config, folder: RunFolder, ids, model_config: gpt.GPTConfig) -> dict:
    """Plain next-character loss on the fact sentences `ids`; returns the final train state."""
    pc = config.pretrain
    opt = train_lib.scheduled_adamw(pc)
    state = train_lib.init_state(gpt.init_params(model_config, jax.random.PRNGKey(config.seed)), opt, config.seed)
    step = train_lib.make_train_step(train_lib.lm_loss(model_config), opt, dropout=model_config.dropout > 0)

    def batch(s):
        x, y = get_batch(ids, config.seed, s, pc.batch_size, model_config.context)
        return {"inputs": x, "targets": y}

    return train_lib.run_training(folder, "pretrain", state, step, batch, pc, mesh=train_lib.training_mesh(pc),
                                  tokens_per_step=pc.batch_size * model_config.context)


def sft_stage(config, folder: RunFolder, state, ids, world: kw.World, tok, model_config: gpt.GPTConfig):
    """The answer after "Answer: " (and its newline), loss on the response only, plus
    `sft_replay_rows` windows of pretraining text (loss everywhere): [choice] without the replay,
    SFT on the train questions erased the test facts (cloze 0.75 -> 0.44), as the PPO-ptx mixing
    of InstructGPT is meant to prevent."""
    sc, P0 = config.sft, kw.prompt_length(world, 0)
    R = response_length(world, config.answer_format)
    opt = train_lib.scheduled_adamw(sc)
    state = train_lib.init_state(distributed.to_host(state["params"]), opt, config.seed + 1)
    step = train_lib.make_train_step(train_lib.lm_loss(model_config), opt, dropout=model_config.dropout > 0)

    def batch(s):
        prompts, answers = random_items(world, tok, config, s, sc.batch_size, 21)
        tokens, mask = posttrain.pack(list(prompts), [tok.encode(a + "\n") for a in answers], P0 + R - 1)
        if config.sft_replay_rows:
            x, y = get_batch(ids, config.seed + 5, s, config.sft_replay_rows, P0 + R - 1)
            tokens = np.concatenate([tokens, np.concatenate([x, y[:, -1:]], axis=1)])
            mask = np.concatenate([mask, np.ones(x.shape, np.float32)])
        return posttrain.as_batch(tokens, mask)

    return train_lib.run_training(folder, "sft", state, step, batch, sc, tokens_per_step=sc.batch_size * P0,
                                  mesh=train_lib.training_mesh(sc, (sc.batch_size + config.sft_replay_rows,)))


def rl_stage(config, folder: RunFolder, state, world: kw.World, tok, model_config: gpt.GPTConfig) -> None:
    """GRPO against the SFT model, reward 1 when the first answer character is the right one."""
    rc, g = config.rl, config.grpo
    ref = jax.tree.map(jnp.asarray, distributed.to_host(state["params"]))  # this process's copy
    opt = train_lib.scheduled_adamw(rc)
    state = train_lib.init_state(distributed.to_host(state["params"]), opt, config.seed + 2)
    step = train_lib.make_train_step(posttrain.grpo_loss(model_config, g), opt, dropout=False)

    def prompt_fn(s):
        prompts, answers = random_items(world, tok, config, s, g.prompts_per_step, 31)
        return prompts, tok.encode("".join(a[0] for a in answers))

    reward_fn = lambda completions, answers: (completions[:, 0] == answers).astype(np.float32)
    rollout = posttrain.make_rollout(model_config, g, reward_fn, prompt_fn, config.seed + 3)
    train_lib.run_training(folder, "rl", state, step, lambda s, p: rollout(s, p, ref), rc, on_policy=True,
                           mesh=train_lib.training_mesh(rc, (g.prompts_per_step * g.group_size,)))


def train_stages(config, folder: RunFolder, world: kw.World, tok, model_config: gpt.GPTConfig) -> dict:
    """Pretrain -> SFT -> RL into `folder`'s checkpoint series (each resumes or is reused): seconds per stage."""
    ids = tok.encode(kw.pretrain_text(world, config.pretrain_chars, config.seed))
    times, t0 = {}, time.perf_counter()
    state = pretrain_stage(config, folder, ids, model_config)
    times["pretrain_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    state = sft_stage(config, folder, state, ids, world, tok, model_config)
    times["sft_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    rl_stage(config, folder, state, world, tok, model_config)
    times["rl_s"] = time.perf_counter() - t0
    return times
