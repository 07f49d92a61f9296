"""Concepts given as counterfactual word pairs, read from JSONL and tokenised with a run's tokenizer.

A pairs file holds one concept a line: `{"concept": "gender", "pairs": [["king", "queen"], ...]}`
(word 0 has the concept's value 0, word 1 its value 1; blank lines are skipped). The built-in
set (`BUILTIN`, 13 English concepts, 288 pairs, written for this project) covers gender, number,
past tense, the case of the first letter, comparative, superlative, third person, progressive,
adverb, negation (un-), country -> capital, country -> nationality and pronoun -> possessive.

How a word becomes rows of the unembedding [choice, each documented where it is decided]:
- forms: inside running text a BPE word carries its leading space (" king" is one token of
  GPT-2's and Pythia's vocabularies, "king" at the start of a text is another). `leading_space`:
  "always" tokenises " word", "never" tokenises "word", "prefer" (default) takes, per pair, the
  leading-space form when both words are one token in it, else the bare form when both are one
  token in that, else (several tokens) the leading-space form. Both words of a pair always use
  the same form, so a pair's difference never carries the space itself.
- several tokens: `multi_token` "drop" (default) leaves the pair out and counts it; "first" uses
  each word's first token; "mean" the mean of its tokens' rows.
- a word the tokenizer cannot write (a character outside a character vocabulary, text mapped to
  an unknown token: decode(encode(word)) differs from the word) leaves its pair out, counted as
  unrepresentable; so does a pair whose two words give the same tokens.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from dynamics import jsonl
from models.errors import OntogenyError, require

BUILTIN = Path(__file__).parent / "data" / "word_pairs.jsonl"
BUILTIN_NAME = "english word pairs (built-in)"
MULTI_TOKEN = ("drop", "first", "mean")
LEADING_SPACE = ("prefer", "always", "never")


def read_pairs(path: str | Path | None = None) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(concept, [(word0, word1), ...])] of a pairs JSONL file (the built-in set when None);
    a malformed row is one line naming the file and the line."""
    path = Path(path) if path else BUILTIN
    require(path.is_file(), f"pairs={str(path)!r} is not a file; give a JSONL file of "
                            f"{{\"concept\": name, \"pairs\": [[word0, word1], ...]}} rows, or leave pairs empty")
    concepts, seen = [], set()
    for n, row in jsonl.rows(path, "concepts"):
        pairs = row.get("pairs") if isinstance(row, dict) else None
        ok = (isinstance(row, dict) and set(row) == {"concept", "pairs"} and isinstance(row["concept"], str)
              and row["concept"].strip() != "" and isinstance(pairs, list) and len(pairs) >= 1
              and all(isinstance(p, list) and len(p) == 2 and all(isinstance(w, str) and w.strip() for w in p)
                      for p in pairs))
        require(ok, f"{path} line {n} is not a row {{\"concept\": name, \"pairs\": [[word0, word1], ...]}} with "
                    f"non-empty words and no other keys; fix that line")
        name = row["concept"].strip()
        require(name not in seen, f"{path} line {n}: concept {name!r} appears twice; merge its pairs into one row")
        seen.add(name)
        concepts.append((name, [(a.strip(), b.strip()) for a, b in pairs]))
    require(concepts, f"{path} holds no concept; give one JSONL row per concept")
    return concepts


def _tokens(tokenizer, text: str) -> tuple[int, ...] | None:
    """The token ids of `text`, or None when the tokenizer cannot write it back."""
    try:
        ids = tuple(int(i) for i in tokenizer.encode(text))
    except OntogenyError:  # a character tokenizer without one of its characters
        return None
    if not ids or tokenizer.decode(list(ids)).strip() != text.strip():
        return None
    return ids


@dataclasses.dataclass
class TokenizedPairs:
    """Pairs as rows of an item table: `items[i]` is one word's token ids; `pairs[k]` the
    (item of word 0, item of word 1) pairs kept for `names[k]`; `report[name]` counts what
    happened to each concept's pairs (given, kept, multi_token, unrepresentable, leading_space)."""
    names: list[str]
    items: list[tuple[int, ...]]
    pairs: list[list[tuple[int, int]]]
    report: dict[str, dict[str, int]]
    words: list[str]


def tokenize_pairs(concepts, tokenizer, *, multi_token: str = "drop", leading_space: str = "prefer",
                   min_pairs: int = 2) -> TokenizedPairs:
    """Each concept's pairs as item indices (see the module docstring for the choices). Concepts
    left with fewer than `min_pairs` pairs are reported and left out of `names` / `pairs`."""
    require(multi_token in MULTI_TOKEN, f"multi_token={multi_token!r} must be one of {', '.join(MULTI_TOKEN)}")
    require(leading_space in LEADING_SPACE, f"leading_space={leading_space!r} must be one of "
                                            f"{', '.join(LEADING_SPACE)}")
    forms = {"always": (" ",), "never": ("",), "prefer": (" ", "")}[leading_space]
    index: dict[tuple[int, ...], int] = {}
    items, words, names, kept_pairs, report = [], [], [], [], {}

    def item(ids: tuple[int, ...], word: str) -> int:
        if ids not in index:
            index[ids] = len(items)
            items.append(ids)
            words.append(word)
        return index[ids]

    for name, pairs in concepts:
        counts = {"given": len(pairs), "kept": 0, "multi_token": 0, "unrepresentable": 0, "leading_space": 0}
        mine = []
        for a, b in pairs:
            tokenized = [(f, _tokens(tokenizer, f + a), _tokens(tokenizer, f + b)) for f in forms]
            written = [(f, x, y) for f, x, y in tokenized if x is not None and y is not None and x != y]
            if not written:
                counts["unrepresentable"] += 1
                continue
            single = [(f, x, y) for f, x, y in written if len(x) == 1 and len(y) == 1]
            if single:
                form, x, y = single[0]
            elif multi_token == "drop":
                counts["multi_token"] += 1
                continue
            else:
                form, x, y = written[0]
                if multi_token == "first":
                    x, y = x[:1], y[:1]
                    if x == y:  # the words differ only after their first token
                        counts["multi_token"] += 1
                        continue
            counts["leading_space"] += form == " "
            mine.append((item(x, form + a), item(y, form + b)))
        counts["kept"] = len(mine)
        report[name] = counts
        if len(mine) >= min_pairs:
            names.append(name)
            kept_pairs.append(mine)
    return TokenizedPairs(names, items, kept_pairs, report, words)
