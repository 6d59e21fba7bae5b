"""Dataclass configs from YAML and dotted overrides, checked on the way in (the mechanism; the run config's
fields live in ``training.config``, the sweep's in ``launch.spec``, the corpus recipe in ``corpus.spec``).

defaults -> YAML -> dotted CLI overrides (``train.epochs=50``). Every error names the offending field
(``train.epochs``) and, for choices, the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from factscale.errors import ConfigError

__all__ = ["ConfigError", "from_dict", "parse_override", "set_dotted", "read_yaml_mapping", "to_dict", "flatten",
           "key_values", "parse_where", "positive_or_none", "normalize_path"]


def normalize_path(path: str) -> str:
    """A path spelled one way: ``./corpora/syn``, ``corpora/syn/`` and an absolute path under the current
    directory all become ``corpora/syn`` (other absolute paths stay absolute, normalized)."""
    if not path:
        return path
    p = os.path.normpath(os.path.expanduser(str(path)))
    if os.path.isabs(p):
        rel = os.path.relpath(p, os.getcwd())
        if not rel.startswith(".."):
            p = rel
    return p


def parse_where(text: str) -> tuple[str, list[str]]:
    """``column=value[,value...]`` -> (column, values): the one reading of ``corpus.where``."""
    col, _, vals = str(text).partition("=")
    return col.strip(), [v.strip() for v in vals.split(",") if v.strip()]


def key_values(text: str | None) -> dict:
    """``a=1,b=x`` -> {"a": "1", "b": "x"} (values stay strings): the CLI's key=value lists."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        if "=" not in part:
            raise ConfigError(f"expected key=value, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def positive_or_none(obj, name, section):
    v = getattr(obj, name)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        raise ConfigError(f"{section}.{name} must be a positive integer or null, got {v!r}")


def _check_type(value, tp, where: str):
    """Coerce/validate a YAML value against a dataclass field type; name the field on error."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed values: {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in typing.get_args(tp):
                return None
            raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got None")
        if len(args) == 1:
            try:
                return _check_type(value, args[0], where)
            except ConfigError as e:
                if isinstance(value, bool) and args[0] is str:  # `off` meant as "none"?
                    raise ConfigError(f"{e} (or null for none)") from None
                raise
        # the alternatives whose shape fits (a recipe field given as a string, a list or a mapping), in order:
        # one fitting alternative gives its own error; of several scalar ones, the first that takes the value
        shaped = {list: list, dict: dict}
        fits = [a for a in args if (want := shaped.get(typing.get_origin(a))) is not None and isinstance(value, want)
                or want is None and not isinstance(value, (list, dict))]
        if len(fits) == 1:
            return _check_type(value, fits[0], where)
        for a in fits:
            try:
                return _check_type(value, a, where)
            except ConfigError:
                if a is str and isinstance(value, bool):  # its message says to quote yes/no/on/off
                    raise
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, typing.get_args(tp)[0], f"{where}[]") for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (typing.Any, typing.Any)
        return {_check_type(k, kt, f"{where} key"): _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # never "False": YAML 1.1 reads unquoted yes/no/on/off as booleans
            raise ConfigError(f"{where}: expected a string, got {value!r} (YAML reads unquoted yes, no, on and off "
                              "as true/false: quote the word)")
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys by name."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown config key '{prefix}{key}'; allowed keys here: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        where = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            if data[f.name] is None:  # `sharding: null`: the nested section's defaults
                kwargs[f.name] = tp()
                continue
            if not isinstance(data[f.name], dict):
                raise ConfigError(f"{where}: expected a mapping, got {data[f.name]!r}")
            kwargs[f.name] = from_dict(tp, data[f.name], prefix=f"{where}.")
        else:
            kwargs[f.name] = _check_type(data[f.name], tp, where)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def parse_override(text: str) -> tuple[str, Any]:
    """``train.epochs=50`` -> ("train.epochs", 50); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key!r}: {p!r} is not a mapping")
        d = nxt
    d[parts[-1]] = value


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (binary content); a {what} is YAML") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory; a {what} is a YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"train.epochs": 10, ...}; lists become JSON strings (one column each)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------- documentation of fields


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (the string literal after its annotation, as
    litgpt's args.py and Sphinx read them), by field name; a field without one is absent."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        names = " | ".join(_type_name(a) for a in args)
        return names + " or null" if type(None) in typing.get_args(tp) else names
    if origin in (list, dict):
        return f"{origin.__name__} of {', '.join(_type_name(a) for a in typing.get_args(tp))}"
    return getattr(tp, "__name__", str(tp))


def describe(cls, prefix: str = "") -> list[dict]:
    """Every field of dataclass ``cls``, nested ones dotted: name, type, default and docstring, in order."""
    hints, docs, out = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += describe(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append({"key": prefix + f.name, "type": _type_name(tp), "default": default, "doc": docs.get(f.name, "")})
    return out


def yaml_value(value) -> str:
    """One value as inline YAML (``null``, ``[16, 64]``, ``'[X]: [Y]'``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text.removesuffix("...").strip()


def commented_yaml(cls, required: dict | None = None) -> str:
    """The defaults of ``cls`` as YAML, each field under its docstring as comments (``factscale config show``)."""
    lines: list[str] = []
    section = None
    for d in describe(cls):
        *path, name = d["key"].split(".")
        if path and path[0] != section:
            section = path[0]
            lines.append(f"{section}:")
        elif not path:
            section = None
        ind = "  " * len(path)
        for doc_line in (d["doc"] or "(undocumented)").splitlines():
            lines.append(f"{ind}# {doc_line}")
        value = (required or {}).get(d["key"], d["default"])
        lines.append(f"{ind}{name}: {yaml_value(value)}")
    return "\n".join(lines) + "\n"
