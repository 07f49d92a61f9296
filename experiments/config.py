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

from dynamics.errors import OntogenyError


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


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def override(config, assignments: list[str]):
    """Apply `key=value` strings to a (possibly nested) frozen dataclass config."""
    for assignment in assignments:
        if "=" not in assignment:
            raise OntogenyError(f"--set {assignment!r}: write overrides as key=value, e.g. --set seed=1")
        key, text = assignment.split("=", 1)
        config = _set_path(config, key.strip().split("."), text.strip(), key.strip())
    return config


def _set_path(config, path: list[str], text: str, full_key: str):
    names = {f.name for f in dataclasses.fields(config)}
    head = path[0]
    if head not in names:
        raise OntogenyError(f"unknown config key {full_key!r}; known keys: {', '.join(sorted(all_keys(config)))}")
    value = getattr(config, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(value):
            raise OntogenyError(f"unknown config key {full_key!r}: {head!r} has no sub-keys")
        new_value = _set_path(value, path[1:], text, full_key)
    else:
        if dataclasses.is_dataclass(value):
            raise OntogenyError(f"config key {full_key!r} is a group; set one of its keys, e.g. {full_key}."
                                f"{dataclasses.fields(value)[0].name}=...")
        new_value = _parse_scalar(text, field_types(type(config))[head], full_key)
    try:
        return dataclasses.replace(config, **{head: new_value})
    except (TypeError, ValueError) as e:
        raise OntogenyError(f"--set {full_key}={text}: {e}") from None


def all_keys(config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def from_dict(cls, data: dict):
    """Rebuild a config dataclass from its JSON form (as written to config.json)."""
    hints = field_types(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kind, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value)
        elif typing.get_origin(kind) in (tuple,) and value is not None:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def require(condition: bool, message: str) -> None:
    """Validation helper for `__post_init__`: raise the user-facing error when false."""
    if not condition:
        raise OntogenyError(message)


def claim_folder(out, experiment: str, preset: str, config) -> None:
    """Write OUT/config.json, or check that the run already there has the same config.

    A folder holding another experiment or other settings is refused (nothing is
    overwritten); the same settings mean "resume or reuse".
    """
    import os

    from dynamics.runlog import to_jsonable, write_json

    from dynamics.runlog import _primary

    if not _primary():  # process 0 claims the folder for a multi-process job
        return
    path = os.path.join(out, "config.json")
    record = {"experiment": experiment, "preset": preset, "config": to_jsonable(config)}
    if os.path.exists(path):
        try:
            previous = json.load(open(path))
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
