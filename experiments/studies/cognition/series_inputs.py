"""The items of a series run and their token arrays under each stage's tokenizer.

`load_task` reads the items (a tasks file with a given or seeded test split, or the knowledge
world's items with its own split) and names them (`text_source`, `record`). `prepare` writes
every text a stage's checkpoints read (`encode_stage`) and keeps the items every stage can read
(`keep_common`
([choice]: an item whose option text or test prompt is longer than a stage's context, or holds a
character a character-level tokenizer cannot write, is dropped from every stage, so all stages
are scored on the same items, and the summary counts the dropped ones); `stage_data` builds the
arrays of `probes.mc_probes.make_checkpoint_fn`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dynamics import knowledge as kw
from dynamics import mc_tasks as mt
from models.errors import OntogenyError, require
from probes import mc_answers
from probes import mc_probes
from probes.layer_probes import pad_tokens


@dataclasses.dataclass(frozen=True)
class Task:
    items: list            # [mt.MCItem]
    train: np.ndarray      # indices into items
    test: np.ndarray
    record: dict           # what the items are (files, checksums, formats, split)
    text_source: str       # the same in one line (every summary's `text_source`)


def load_task(config) -> Task:
    """The items and their train/test split (see the module docstring)."""
    if not config.tasks:
        world = kw.make_world(config.world)
        items = mt.world_items(world, config.seed)
        text = (f"the knowledge world's items ({len(world.test)} held-out questions, world seed {world.config.seed}, "
                f"items seed {config.seed})")
        return Task(items, world.train, world.test, {"world": dataclasses.asdict(config.world)}, text)
    items, fmt = mt.read_tasks(config.tasks)
    items = [items[i] for i in mt.sample(len(items), config.max_items, config.seed, 1)]
    record = {"tasks": str(Path(config.tasks).resolve()), "sha256": mt.file_sha256(config.tasks), "format": fmt}
    name = f"{Path(config.tasks).resolve()} ({fmt}, sha256 {record['sha256'][:12]})"
    if config.test_tasks:
        test_items, test_fmt = mt.read_tasks(config.test_tasks)
        test_items = [test_items[i] for i in mt.sample(len(test_items), config.max_items, config.seed, 2)]
        record.update(test_tasks=str(Path(config.test_tasks).resolve()), test_sha256=mt.file_sha256(config.test_tasks),
                      test_format=test_fmt)
        train, test = np.arange(len(items)), np.arange(len(items), len(items) + len(test_items))
        name += f" for training, {Path(config.test_tasks).resolve()} ({test_fmt}) held out"
        items = items + test_items
    else:
        train, test = mt.split(len(items), config.test_fraction, config.seed)
        name += f", a seeded split (seed {config.seed}) holding out {len(test)} items"
    record.update(n_train=int(len(train)), n_test=int(len(test)))
    return Task(items, np.asarray(train), np.asarray(test), record, name)


def _encode(tokenizer, text: str):
    """Token ids, or None when a character tokenizer cannot write the text."""
    try:
        return np.asarray(tokenizer.encode(text), np.int32)
    except OntogenyError:
        return None


def encode_stage(task: Task, tokenizer, context: int, n_new: int) -> dict:
    """Every text a stage reads, and which items fit: {"options": [[ids]] per item, "prompts",
    "prefix", "letter_ids", "fits" [items]}. A test item fits when its prompt leaves room for
    n_new tokens and for the letters' prefix and letter."""
    K = max(len(it.choices) for it in task.items)
    prefix, letter_ids = mc_answers.letter_continuations(tokenizer, K, mt.LETTERS)
    options = [[_encode(tokenizer, mt.option_text(it, k)) for k in range(len(it.choices))] for it in task.items]
    fits = np.array([all(o is not None and 1 <= len(o) <= context for o in opts) for opts in options])
    prompts = {}
    for i in task.test:
        p = _encode(tokenizer, mt.prompt_text(task.items[i]))
        prompts[int(i)] = p
        fits[i] &= p is not None and len(p) + max(n_new, len(prefix) + 1) <= context
    return {"options": options, "prompts": prompts, "prefix": prefix, "letter_ids": letter_ids, "fits": fits,
            "context": context}


def keep_common(task: Task, encoded: list[dict]) -> tuple[np.ndarray, np.ndarray, int]:
    """(train, test) items every stage can read, and how many items were dropped."""
    fits = np.logical_and.reduce([e["fits"] for e in encoded])
    train, test = task.train[fits[task.train]], task.test[fits[task.test]]
    dropped = len(task.train) + len(task.test) - len(train) - len(test)
    require(len(train) >= 2 and len(test) >= 1,
            f"{len(train)} train and {len(test)} test items fit every stage's context and tokenizer ({dropped} "
            f"dropped); the probes need 2 train items (two folds) and 1 test item: give more or shorter items")
    return train, test, dropped


def prepare(config, stages, task: Task) -> dict:
    """Each stage's tokenizer, model config and encoded texts, and the items they all read:
    {"tokenizers", "models", "encoded", "train", "test", "dropped"}; refused in one line when a
    stage cannot write the answer letters or too few items fit."""
    from dynamics import checkpoints, run_tokenizer

    tokenizers = [run_tokenizer.load_tokenizer(Path(s.run)) for s in stages]
    models = [checkpoints.load_model_config(s.run) for s in stages]
    encoded = [encode_stage(task, tok, m.context, config.max_new_tokens) for tok, m in zip(tokenizers, models)]
    train, test, dropped = keep_common(task, encoded)
    return {"tokenizers": tokenizers, "models": models, "encoded": encoded, "train": train, "test": test,
            "dropped": dropped}


def stage_data(task: Task, enc: dict, train, test, seed: int) -> dict:
    """The arrays of one stage's checkpoint fn (items renumbered: train first, then test)."""
    items = np.concatenate([train, test])
    K = max(len(task.items[i].choices) for i in items)
    rows, rows_IK, valid_IK = [], np.zeros((len(items), K), np.int32), np.zeros((len(items), K), bool)
    for n, i in enumerate(items):
        for k, ids in enumerate(enc["options"][i]):
            rows_IK[n, k], valid_IK[n, k] = len(rows), True
            rows.append(ids)
    answers = np.array([task.items[i].answer for i in items])
    n_train = len(train)
    layouts = mc_probes.fold_layouts(rows_IK, valid_IK, answers, np.arange(n_train),
                                     np.arange(n_train, len(items)), seed)
    option_rows, option_lengths = pad_tokens(rows, enc["context"])
    prompts = [enc["prompts"][int(i)] for i in test]
    prompt_rows, prompt_lengths = pad_tokens(prompts, enc["context"])
    score_rows, score_lengths = pad_tokens([np.concatenate([p, enc["prefix"]]) for p in prompts], enc["context"])
    return {"option_rows": option_rows, "option_lengths": option_lengths, "layouts": layouts,
            "score_rows": score_rows, "score_lengths": score_lengths, "letter_ids": enc["letter_ids"][:K],
            "prompts": prompt_rows, "prompt_lengths": prompt_lengths}


def fewshot_prompts(task: Task, tokenizer, train, test, k: int, seed: int, room: int):
    """(token ids of each test item's k-shot prompt, shots used [E]): k train items drawn per test
    item (seeded by the item), the earliest shots dropped while the prompt exceeds `room` tokens."""
    prompts, used = [], []
    for i in test:
        pick = np.random.default_rng([seed, 41, int(i)]).choice(train, min(k, len(train)), replace=False)
        shots = [task.items[j] for j in pick]
        while True:
            ids = _encode(tokenizer, mt.fewshot_text(task.items[i], shots))
            if ids is not None and len(ids) <= room or not shots:
                break
            shots = shots[1:]
        require(ids is not None, "a few-shot prompt holds a character the tokenizer cannot write; drop fewshot")
        prompts.append(ids)
        used.append(len(shots))
    return prompts, np.array(used)
