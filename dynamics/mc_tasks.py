"""Multiple-choice benchmark items (the tasks of Yan et al.: OpenBookQA, ARC, CommonsenseQA, RACE)
read from JSONL, split, and written as prompts.

One item a line, in any of these layouts (every row of a file is read on its own):

- ARC / CommonsenseQA as Hugging Face `datasets` exports them:
  {"question": str, "choices": {"text": [...], "label": ["A", ...]}, "answerKey": "B"}
  (ARC's labels may be "1".."4"; the answer is matched against the row's own labels);
- OpenBookQA: the same with "question_stem" in place of "question";
- RACE: {"article": str, "question": str, "options": [...], "answer": "C"};
- AI2's original files (ARC, OpenBookQA, CommonsenseQA): {"question": {"stem": str, "choices":
  [{"label", "text"}, ...]}, "answerKey"};
- plain: {"question": str, "choices": [str, ...], "answer": "B" or a 0-based index}, with an
  optional "context" passage (MMLU's export, {"question", "choices", "answer": 1}, reads as plain;
  so does the `evaluate` study's {"context", "choices", "answer": 0}, its context as the question).

Whatever the labels in the file, the options are shown as A, B, C, ... in their order
([choice]: one answer alphabet for every task). A malformed row stops the read with one line
naming the file, the line and the fix.

Prompts ([choice], the lettered format of MMLU-style evaluations):

    {context}                      (RACE's article, a plain row's context; absent otherwise)

    Question: {question}
    A. {choice}
    B. {choice}
    Answer:

the answer is the continuation " B"; a k-shot prompt is k solved train items, each followed by
a blank line, then the query. The cognitive probes read "Question: {question}\\nAnswer: {choice}"
(after the context), one text per option.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from dynamics import jsonl
from models.errors import OntogenyError, require

LETTERS = "ABCDEFGHIJ"


@dataclasses.dataclass(frozen=True)
class MCItem:
    question: str
    choices: tuple[str, ...]
    answer: int          # index of the right choice
    context: str = ""    # a passage shown before the question (RACE's article)


# --------------------------------------------------------------------------------- reading
def _labelled(choices, key, where: str) -> tuple[tuple[str, ...], int]:
    """(texts, answer index) from parallel text/label lists and an answer key."""
    texts, labels = choices.get("text"), choices.get("label")
    require(isinstance(texts, list) and isinstance(labels, list) and len(texts) == len(labels),
            f"{where}: \"choices\" needs lists \"text\" and \"label\" of one length; fix the row")
    require(isinstance(key, str) and key.strip() != "",
            f"{where}: the row has no \"answerKey\" (an unlabelled test split?); use a labelled split such as "
            f"validation, or drop the row")
    labels = [str(label).strip() for label in labels]
    require(key.strip() in labels, f"{where}: answerKey {key!r} is not one of the labels {labels}; fix the row")
    return tuple(texts), labels.index(key.strip())


def _answer_index(answer, n: int, where: str) -> int:
    """A letter ("B") or a 0-based index (1) -> index."""
    if isinstance(answer, bool):
        answer = None
    if isinstance(answer, int) and 0 <= answer < n:
        return answer
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS[:n]:
        return LETTERS.index(answer.strip().upper())
    raise OntogenyError(f"{where}: \"answer\" {answer!r} is neither a letter among {LETTERS[:n]} nor an index "
                        f"0..{n - 1}; fix the row")


def parse_row(row, where: str) -> tuple[MCItem, str]:
    """(item, format name) of one decoded JSON row."""
    require(isinstance(row, dict), f"{where}: a row must be a JSON object; see dynamics.mc_tasks for the layouts")
    question, context = row.get("question"), ""
    if isinstance(question, dict):                                     # AI2's original files
        choices = question.get("choices")
        require(isinstance(choices, list) and all(isinstance(c, dict) for c in choices),
                f"{where}: \"question\".\"choices\" must be a list of {{\"label\", \"text\"}}; fix the row")
        texts, answer = _labelled({"text": [c.get("text") for c in choices], "label": [c.get("label") for c in choices]},
                                  row.get("answerKey"), where)
        question, fmt = question.get("stem"), "ai2"
    elif isinstance(row.get("choices"), dict):                        # ARC, OpenBookQA, CommonsenseQA exports
        if question is None and "question_stem" in row:
            question, fmt = row["question_stem"], "openbookqa"
        else:
            fmt = "commonsenseqa" if "question_concept" in row else "arc"
        texts, answer = _labelled(row["choices"], row.get("answerKey"), where)
    elif "options" in row and "article" in row:                        # RACE
        texts, fmt, context = row["options"], "race", row["article"]
        require(isinstance(texts, list), f"{where}: \"options\" must be a list of strings; fix the row")
        answer = _answer_index(row.get("answer"), len(texts), where)
    elif isinstance(row.get("choices"), list):                         # plain
        texts, fmt, context = row["choices"], "plain", row.get("context", "")
        if question is None:  # a completion item ({"context", "choices", "answer"}): its context is the question
            question, context = context, ""
        answer = _answer_index(row.get("answer"), len(texts), where)
    else:
        raise OntogenyError(f"{where}: not a multiple-choice row (ARC, OpenBookQA, CommonsenseQA, RACE or "
                            f"{{\"question\", \"choices\": [...], \"answer\": \"B\"}}); fix the row")
    require(isinstance(question, str) and question.strip() != "", f"{where}: the question is missing or empty; "
                                                                   f"fix the row")
    require(isinstance(context, str), f"{where}: the context/article must be a string; fix the row")
    require(2 <= len(texts) <= len(LETTERS), f"{where}: {len(texts)} choices; give 2 to {len(LETTERS)}")
    require(all(isinstance(t, str) and t.strip() != "" for t in texts),
            f"{where}: every choice must be a non-empty string; fix the row")
    return MCItem(question.strip(), tuple(t.strip() for t in texts), int(answer), context.strip()), fmt


def read_tasks(path: str | Path) -> tuple[list[MCItem], str]:
    """(items, format names joined by "+") of a JSONL file; blank lines are skipped."""
    require(Path(path).is_file(), f"tasks file {path} does not exist; give a JSONL file of multiple-choice items")
    items, formats = [], []
    for n, row in jsonl.rows(path, "multiple-choice items"):
        require(row is not None, f"{path} line {n} is not valid JSON; write one JSON object a line")
        item, fmt = parse_row(row, f"{path} line {n}")
        items.append(item)
        formats.append(fmt)
    require(items, f"{path} holds no items; give a JSONL file of multiple-choice items")
    return items, "+".join(dict.fromkeys(formats))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sample(n: int, max_items: int, seed: int, stream: int) -> np.ndarray:
    """Sorted indices of at most `max_items` of n items (all when 0), a pure function of the seed."""
    if not max_items or max_items >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, stream]).choice(n, max_items, replace=False))


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sorted indices of a seeded random split of n items."""
    order = np.random.default_rng([seed, 61]).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def world_items(world, seed: int) -> list[MCItem]:
    """The knowledge world's questions as items (`dynamics.knowledge`): the question template
    ("zorb lives in?"), the options of `fixed_items` (the toy study's evaluation items, same seed)
    as choices; the world's own train/test split applies (`world.train`, `world.test`)."""
    from dynamics import knowledge as kw

    options, answers = kw.fixed_items(world, np.arange(len(world.questions)), seed)
    return [MCItem(kw.ATTRIBUTES[a][1].format(e=world.entities[e]),
                   tuple(kw.value_name(a, int(v)) for v in opts), int(k))
            for (e, a), opts, k in zip(world.questions, options, answers)]


# ---------------------------------------------------------------------------------- prompts
def _head(item: MCItem) -> str:
    return f"{item.context}\n\n" if item.context else ""


def prompt_text(item: MCItem) -> str:
    """The expressive prompt: context, question, lettered options, "Answer:"."""
    options = "".join(f"{LETTERS[k]}. {c}\n" for k, c in enumerate(item.choices))
    return f"{_head(item)}Question: {item.question}\n{options}Answer:"


def solved_text(item: MCItem) -> str:
    """A worked example: the prompt and its answer letter."""
    return f"{prompt_text(item)} {LETTERS[item.answer]}"


def fewshot_text(item: MCItem, shots) -> str:
    """Solved `shots`, a blank line after each, then the query's prompt."""
    return "".join(solved_text(s) + "\n\n" for s in shots) + prompt_text(item)


def option_text(item: MCItem, k: int) -> str:
    """The text whose last-token state the cognitive probes read for choice k."""
    return f"{_head(item)}Question: {item.question}\nAnswer: {item.choices[k]}"
