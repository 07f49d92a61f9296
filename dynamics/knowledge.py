"""A synthetic knowledge world and its multiple-choice task (for the cognition-vs-expression study).

E invented entities each have one value for each of A attributes ("zorb lives in pell.").
The pretraining text states every fact in plain sentences, shuffled and repeated; it never
shows the question/options/answer format, so after pretraining the facts can sit in the
hidden states while the model has no habit of answering with a letter.

A question is one (entity, attribute) pair; questions are split into train and test. An item
is a question with K options (the true value and K-1 other values of that attribute, in a
random order) and its answer, written either as the option's text (answer_format "value",
the default) or as its letter ("letter"):

    Q: zorb lives in?
    A) pell B) mik C) dov D) tam
    Answer: mik            (or: Answer: B)

Values of one attribute start with distinct characters, so the first answer character
identifies the chosen option in both formats: chance is 1/K for a model that picks an option
at random. [choice] The letter format asks a character model to map a recalled value to the
letter printed before it, a two-hop lookup that a 3-layer model did not learn in 150 SFT steps
(the SFT loss stayed at ln 4); the value format keeps the question/options/answer structure
and leaves the read-out learnable at the tiny scale.

Prompts are left-padded with newlines (the sentence separator of the pretraining text) to
one fixed length, so every batch has one shape and the answer always sits at the same
position. Everything is a pure function of explicit seeds.
"""
from __future__ import annotations

import dataclasses
from math import comb

import numpy as np

from dynamics.data import CharTokenizer
from models.errors import require

LETTERS = "ABCDEFGH"
PAD = "\n"
# (fact template, question template, values): values of one attribute start with distinct letters.
ATTRIBUTES = (
    ("{e} lives in {v}.", "{e} lives in?", ("pell", "mik", "dov", "tam", "rusk", "gno", "bix", "lua")),
    ("{e} likes {v}.", "{e} likes?", ("figs", "rice", "soup", "kale", "nuts", "beans", "plums", "eggs")),
    ("{e} is a {v}.", "{e} is a?", ("baker", "smith", "nurse", "cook", "monk", "poet", "judge", "tailor")),
    ("{e} owns a {v}.", "{e} owns a?", ("cat", "dog", "hen", "goat", "mule", "fox", "owl", "yak")),
)
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    n_entities: int = 48         # made-up entities with one value per attribute
    n_attributes: int = 3        # attributes per entity (lives in, likes, ...)
    n_values: int = 6            # values per attribute actually used (<= 8)
    n_options: int = 4           # K: chance is 1/K
    test_fraction: float = 0.5   # share of (entity, attribute) questions held out for testing
    seed: int = 0                # draws the names, the facts and the train/test split

    def __post_init__(self):
        require(self.n_entities >= 4, f"world.n_entities={self.n_entities} must be >= 4")
        require(1 <= self.n_attributes <= len(ATTRIBUTES), f"world.n_attributes must lie in [1, {len(ATTRIBUTES)}]")
        require(2 <= self.n_options <= self.n_values <= 8,
                f"need 2 <= world.n_options ({self.n_options}) <= world.n_values ({self.n_values}) <= 8")
        require(0 < self.test_fraction < 1, f"world.test_fraction={self.test_fraction} must lie in (0, 1)")


@dataclasses.dataclass(frozen=True)
class World:
    config: WorldConfig
    entities: tuple[str, ...]
    values_EA: np.ndarray         # [E, A] index of each entity's value per attribute
    questions: np.ndarray         # [Q, 2] (entity, attribute), Q = E * A
    train: np.ndarray             # indices into questions
    test: np.ndarray

    @property
    def chance(self) -> float:
        return 1.0 / self.config.n_options


def entity_names(n: int, rng: np.random.Generator) -> tuple[str, ...]:
    """n distinct consonant-vowel-consonant-consonant names ("zorb")."""
    names: list[str] = []
    while len(names) < n:
        c = rng.choice(list(_CONSONANTS), 3)
        name = c[0] + rng.choice(list(_VOWELS)) + c[1] + c[2]
        if name not in names:
            names.append(name)
    return tuple(names)


def make_world(config: WorldConfig) -> World:
    rng = np.random.default_rng(config.seed)
    entities = entity_names(config.n_entities, rng)
    values = rng.integers(0, config.n_values, (config.n_entities, config.n_attributes))
    questions = np.array([(e, a) for e in range(config.n_entities) for a in range(config.n_attributes)])
    order = rng.permutation(len(questions))
    n_test = int(round(config.test_fraction * len(questions)))
    return World(config, entities, values, questions, np.sort(order[n_test:]), np.sort(order[:n_test]))


def value_name(a: int, v: int) -> str:
    return ATTRIBUTES[a][2][v]


def fact_sentence(world: World, e: int, a: int, v: int | None = None) -> str:
    """The fact sentence for (e, a), with value v filled in (default: the true value)."""
    v = world.values_EA[e, a] if v is None else v
    return ATTRIBUTES[a][0].format(e=world.entities[e], v=value_name(a, v))


def pretrain_text(world: World, n_chars: int, seed: int = 0) -> str:
    """All facts, one per line, in fresh random orders until n_chars (plain sentences only)."""
    rng = np.random.default_rng([seed, 7])
    facts = [fact_sentence(world, e, a) for e, a in world.questions]
    out, size = [], 0
    while size < n_chars:
        for i in rng.permutation(len(facts)):
            out.append(facts[i])
            size += len(facts[i]) + 1
    return "\n".join(out)[:n_chars]


def draw_item(world: World, q: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(option value indices [K], index of the true one) for question q."""
    e, a = world.questions[q]
    true = world.values_EA[e, a]
    others = rng.permutation([v for v in range(world.config.n_values) if v != true])[: world.config.n_options - 1]
    options = np.insert(others, 0, true)
    perm = rng.permutation(world.config.n_options)
    return options[perm], int(np.argmax(perm == 0))


def fixed_items(world: World, questions: np.ndarray, seed: int = 0):
    """One item per question (the evaluation set): options [N, K] and answers [N]."""
    items = [draw_item(world, int(q), np.random.default_rng([seed, 11, int(q)])) for q in questions]
    return np.stack([o for o, _ in items]), np.array([k for _, k in items])


def format_prompt(world: World, q: int, options) -> str:
    e, a = world.questions[q]
    listed = " ".join(f"{LETTERS[k]}) {value_name(a, v)}" for k, v in enumerate(options))
    return f"Q: {ATTRIBUTES[a][1].format(e=world.entities[e])}\n{listed}\nAnswer: "


FORMATS = ("value", "letter")


def answer_text(world: World, q: int, options, answer: int, fmt: str = "value") -> str:
    """The answer as written after "Answer: ": the option's text or its letter."""
    require(fmt in FORMATS, f"answer_format={fmt!r} is unknown; choose one of {FORMATS}")
    return value_name(int(world.questions[q][1]), int(options[answer])) if fmt == "value" else LETTERS[answer]


def option_heads(world: World, q: int, options, fmt: str = "value") -> str:
    """The first answer character of each option, [K] (distinct within an item)."""
    return "".join(answer_text(world, q, options, k, fmt)[0] for k in range(len(options)))


def format_example(world: World, q: int, options, answer: int, fmt: str = "value") -> str:
    """A solved item (for few-shot prompts and SFT), ending in a newline."""
    return format_prompt(world, q, options) + answer_text(world, q, options, answer, fmt) + "\n"


def fewshot_prompt(world: World, q: int, options, shots: list[tuple[int, np.ndarray, int]],
                   fmt: str = "value") -> str:
    """k solved examples [(question, options, answer)], a blank line after each, then the query."""
    return "".join(format_example(world, s, o, k, fmt) + "\n" for s, o, k in shots) + format_prompt(world, q, options)


def all_text(world: World) -> str:
    """Every character the study ever writes (so the tokenizer covers the QA format too)."""
    facts = "\n".join(fact_sentence(world, e, a, v) for e, a in world.questions for v in range(world.config.n_values))
    return facts + PAD + "Q: ?) Answer: " + LETTERS[: world.config.n_options] + "abcdefghijklmnopqrstuvwxyz"


def tokenizer(world: World) -> CharTokenizer:
    return CharTokenizer(all_text(world))


def left_pad(texts: list[str], tok: CharTokenizer, length: int | None = None) -> np.ndarray:
    """Token rows [N, length], each text right-aligned after PAD characters."""
    length = length or max(len(t) for t in texts)
    require(all(len(t) <= length for t in texts), f"a prompt of {max(len(t) for t in texts)} characters exceeds "
                                                  f"the padded length {length}; raise model.context")
    return np.stack([tok.encode(PAD * (length - len(t)) + t) for t in texts]).astype(np.int32)


def letter_ids(tok: CharTokenizer, n_options: int) -> np.ndarray:
    return tok.encode(LETTERS[:n_options])


def prompt_length(world: World, shots: int = 0) -> int:
    """Longest possible prompt with `shots` examples (values at their longest)."""
    longest = {a: max(ATTRIBUTES[a][2][: world.config.n_values], key=len) for a in range(world.config.n_attributes)}
    name = "x" * 4
    one = max(len(f"Q: {ATTRIBUTES[a][1].format(e=name)}\n") + world.config.n_options * (len(longest[a]) + 4)
              + len("Answer: ") for a in longest)
    answer = max(len(v) for v in longest.values())  # the longest answer of either format
    return (shots + 1) * one + shots * (answer + 2)


def pass_at_k(n: int, c, k: int):
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), for c correct of n samples.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids huge binomials; c may be an array.
    """
    c = np.asarray(c)
    require(1 <= k <= n, f"pass@k needs 1 <= k <= n (k={k}, n={n})")
    i = np.arange(1, n + 1)
    # factor (1 - k/i) for i in (n-c, n]; 1 elsewhere
    factors = np.where(i[None, :] > (n - c.reshape(-1))[:, None], 1.0 - k / i[None, :], 1.0)
    out = np.where(n - c.reshape(-1) < k, 1.0, 1.0 - np.prod(factors, axis=1))
    return out.reshape(c.shape)


def pass_at_k_exact(n: int, c: int, k: int) -> float:
    """The same estimator with exact binomials (reference)."""
    return 1.0 - comb(n - c, k) / comb(n, k)
