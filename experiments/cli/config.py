"""Experiment configs: frozen dataclasses, presets, and `--set key=value` overrides.

A config is a frozen dataclass whose `__post_init__` validates it and raises
`OntogenyError` with the fix. Nested dataclasses are addressed with dotted keys
(`--set model.d_model=256`). Values are parsed by the field's declared type.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any

from models.errors import OntogenyError
from dynamics.runlog import field_types


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a usage error raises OntogenyError (one line, exit 2)."""

    def error(self, message):
        raise OntogenyError(f"{message}; see `{self.prog} --help`")


def _parse_scalar(text: str, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "types.UnionType":
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _parse_scalar(text, options[0], key)
    if origin in (tuple, list):
        (inner, *rest) = typing.get_args(kind) or (str,)
        parts = [p for p in text.strip("()[]").split(",") if p.strip()]
        return tuple(_parse_scalar(p.strip(), inner, key) for p in parts)
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind is int:
            return int(float(text)) if float(text).is_integer() else int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
    except ValueError:
        raise OntogenyError(f"--set {key}={text}: expected a value of type {kind.__name__}; give e.g. "
                            f"{key}={'true' if kind is bool else '1' if kind is int else '0.5'}") from None
    return json.loads(text)


def field_help(cls) -> dict[str, str]:
    """One line of meaning per field of a config dataclass: the comment(s) on the field's own
    line(s) in its class body (`steps: int = 2000  # optimizer steps`). Kept next to the field,
    with no import, so models/ can document its configs too."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    body = ast.parse(source).body[0].body
    out = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, node.end_lineno + 1)
            out[node.target.id] = " ".join(comments[n] for n in lines if n in comments)
    return out


def _type_name(kind) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")


def help_rows(config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) for every leaf key of a config, nested keys dotted."""
    rows, helps, types = [], field_help(type(config)), field_types(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            rows += help_rows(value, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, _type_name(types[f.name]), repr(value), helps.get(f.name, "")))
    return rows


def unused_keys(config, prefix: str = "") -> dict[str, str]:
    """Keys this config's other settings leave without effect -> why (each config class may define
    `unused() -> {key: reason}`, keys relative to itself, dotted for nested ones). Setting one of
    them is refused: nothing is accepted and then ignored."""
    found = {prefix + k: why for k, why in (config.unused() if hasattr(config, "unused") else {}).items()}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            found.update(unused_keys(value, prefix + f.name + "."))
    return found


def help_text(config, preset: str) -> str:
    """The `--help` table of a study's keys (defaults of `preset`); keys it ignores are listed apart."""
    unused = unused_keys(config)
    rows = [r for r in help_rows(config) if r[0] not in unused]
    width = max(len(r[0]) for r in rows)
    lines = [f"config keys (--set KEY=VALUE; defaults of preset {preset}):"]
    lines += [f"  {key:<{width}}  {kind} = {default}: {meaning}" for key, kind, default, meaning in rows]
    if unused:
        lines.append(f"not settable with these settings: {', '.join(sorted(unused))}")
    return "\n".join(lines)


def override(config, assignments: list[str]):
    """Apply `key=value` strings to a (possibly nested) frozen dataclass config.

    All assignments are applied together and the result is validated once, so overrides
    that only make sense jointly (n_features=32 with aux_k=4) are accepted in any order.
    """
    changes = {}
    for assignment in assignments:
        if "=" not in assignment:
            raise OntogenyError(f"--set {assignment!r}: write overrides as key=value, e.g. --set seed=1")
        key, text = assignment.split("=", 1)
        changes[key.strip()] = text.strip()
    result = _apply(config, [(k.split("."), text, k) for k, text in changes.items()])
    unused = unused_keys(result)
    for key in changes:
        if key in unused:
            raise OntogenyError(f"--set {key}: {unused[key]}; drop this override")
    return result


def _apply(config, items: list[tuple[list[str], str, str]]):
    """items: (path below `config`, value text, full key); one dataclasses.replace per level."""
    names = {f.name for f in dataclasses.fields(config)}
    updates, nested = {}, {}
    for path, text, full_key in items:
        head = path[0]
        if head not in names:
            raise OntogenyError(f"unknown config key {full_key!r}; known keys: {', '.join(sorted(all_keys(config)))}")
        value = getattr(config, head)
        if len(path) > 1:
            if not dataclasses.is_dataclass(value):
                raise OntogenyError(f"unknown config key {full_key!r}: {head!r} has no sub-keys")
            nested.setdefault(head, []).append((path[1:], text, full_key))
        elif dataclasses.is_dataclass(value):
            raise OntogenyError(f"config key {full_key!r} is a group; set one of its keys, e.g. {full_key}."
                                f"{dataclasses.fields(value)[0].name}=...")
        else:
            updates[head] = _parse_scalar(text, field_types(type(config))[head], full_key)
    for head, sub in nested.items():
        path, _, full_key = sub[0]
        typed_prefix = full_key[: len(full_key) - len(".".join(path))]  # "grpo." for grpo.group_size
        try:
            updates[head] = _apply(getattr(config, head), sub)
        except OntogenyError as e:  # the nested class names its keys its own way (train.warmup, rl.*)
            raise OntogenyError(_as_typed(str(e), getattr(config, head), typed_prefix)) from None
    try:
        return dataclasses.replace(config, **updates)
    except (TypeError, ValueError) as e:
        given = " ".join(f"{k}={t}" for _, t, k in items)
        raise OntogenyError(f"--set {given}: {e}") from None


def _as_typed(message: str, nested, typed_prefix: str) -> str:
    """Rewrite `anything.field` in a nested config's message as the key the user typed
    (`rl.group_size` -> `grpo.group_size` when the user wrote grpo.group_size)."""
    import re

    names = "|".join(sorted((f.name for f in dataclasses.fields(nested)), key=len, reverse=True))
    return re.sub(rf"(?<![\w.])[A-Za-z_]\w*\.({names})\b(?!\.)", lambda m: typed_prefix + m.group(1), message)


def all_keys(config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def claim_folder(out, experiment: str, preset: str, config):
    """Take OUT's writer lock, then write OUT/config.json, or check that the run already there has
    the same config. Returns the lock, held: use `with claim_folder(...):` (or `.release()`); it
    is released at exit in any case.

    A second process writing OUT is refused (one line naming it, `dynamics.locks`); a folder
    holding another experiment or other settings is refused (nothing is overwritten); the same
    settings mean "resume or reuse".
    """
    from dynamics import distributed, locks

    # Every process of a multi-process job checks (so all refuse alike); process 0 locks and writes.
    lock = locks.folder_lock(out, active=distributed.is_primary()).acquire()
    try:
        _check_or_write(out, experiment, preset, config)
    except BaseException:
        lock.release()
        raise
    return lock


def run_into(out, name: str, preset: str, module, config, keep_finished: bool = False) -> dict:
    """Run study `module` (registered as `name`) with `config` into the run folder OUT, as every
    command does: every reference checked before any folder (`module.resolve`), OUT claimed
    (`claim_folder`: one writer), the run, a non-finite headline refused before summary.json
    (`require_finite_summary`), summary.json written. Returns the summary; with `keep_finished`
    a folder that already holds one is left as it is."""
    from dynamics.runlog import RunFolder, require_finite_summary

    module.resolve(config)
    with claim_folder(out, name, preset, config):
        folder = RunFolder(out)
        summary = folder.read_summary() if keep_finished else None
        if summary is None:
            summary = module.run(config, folder)
            require_finite_summary(summary, str(out))
            folder.write_summary(summary)
    return summary


def _check_or_write(out, experiment: str, preset: str, config) -> None:
    import os

    from dynamics.runlog import to_jsonable, write_json

    path = os.path.join(out, "config.json")
    record = {"experiment": experiment, "preset": preset, "config": to_jsonable(config)}
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
            if not isinstance(previous, dict):
                raise ValueError(path)
        except (OSError, ValueError):
            raise OntogenyError(f"{path} is unreadable; use a new --out or delete that folder") from None
        if previous.get("experiment") != experiment or previous.get("config") != record["config"]:
            changed = [k for k in all_keys(config) if _lookup(previous.get("config"), k) != _lookup(record["config"], k)]
            what = ", ".join(changed[:4]) if previous.get("experiment") == experiment else "experiment"
            raise OntogenyError(f"{out} holds a {previous.get('experiment')} run with different settings ({what} "
                                f"differ); use a new --out, or the same settings to resume")
        return
    os.makedirs(out, exist_ok=True)
    write_json(path, record)


def _lookup(tree, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree
