"""Command-line flags from a config dataclass: each option is stated once, as a field.

A field made by ``option(...)`` is a flag: ``--<name-with-dashes>`` unless ``flag`` says
otherwise, its default the field's, its help text the field's (argparse fills in
``%(default)s``), its type read from the annotation (``int``, ``float``; anything with ``str``
in it stays a string; ``bool`` is a switch: ``--name`` sets True, or with ``invert`` a flag
such as ``--no-filter`` sets False). A field without a default is a required flag. Fields
made otherwise are not flags (provenance, switches for Python callers).

``add_options(parser, Config)`` adds the flags, ``options_of(Config, args)`` reads them back as
the keyword arguments of ``Config``: the flags, the dataclass and the copy between them are one.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["add_options", "option", "options_of"]

_KEY = "relspec.option"  # the metadata entry that makes a field a flag


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    invert: bool = False,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a flag (module docstring).

    Example:
        >>> import argparse, dataclasses
        >>> from relspec_lmeval.util.options import add_options, option, options_of
        >>> @dataclasses.dataclass
        ... class Config:
        ...     out: str = option(help="output folder")
        ...     k: int = option(10, help="neurons per set (default %(default)s)")
        ...     filter: bool = option(True, flag="--no-filter", invert=True, help="keep every prompt")
        >>> parser = argparse.ArgumentParser(prog="demo")
        >>> add_options(parser, Config)
        >>> Config(**options_of(Config, parser.parse_args(["--out", "o", "--k", "5", "--no-filter"])))
        Config(out='o', k=5, filter=False)
    """
    meta = {_KEY: {"help": help, "flag": flag, "invert": invert, "choices": choices, "metavar": metavar}}
    return dataclasses.field(default=default, metadata=meta)


def _scalar(annotation: Any) -> Callable[[str], Any] | None:
    """``int`` or ``float`` when the annotation is one of them (or it or None); else None: a string."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if any(a is str or typing.get_origin(a) is not None for a in args) or len(args) != 1:
        return None
    return args[0] if args[0] in (int, float) else None


def _flags(cls: type) -> list[tuple[dataclasses.Field, dict[str, Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, f.metadata[_KEY], hints[f.name]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def add_options(parser: argparse.ArgumentParser, cls: type, *, types: Mapping[str, Callable[[str], Any]] | None = None) -> None:
    """Add a flag to ``parser`` for every ``option`` field of the dataclass ``cls``.

    ``types`` gives a field a parser of its own (``batch_size``: an integer or ``auto``).
    """
    types = types or {}
    for f, meta, annotation in _flags(cls):
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if f.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if annotation is bool:
            kwargs["action"] = "store_false" if meta["invert"] else "store_true"
        else:
            kind = types.get(f.name) or _scalar(annotation)
            kwargs.update({key: value for key, value in (("type", kind), ("choices", meta["choices"]), ("metavar", meta["metavar"]))
                           if value is not None})
        parser.add_argument(meta["flag"] or "--" + f.name.replace("_", "-"), **kwargs)


def options_of(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as keyword arguments of ``cls`` (its ``option`` fields only)."""
    return {f.name: getattr(args, f.name) for f, _, _ in _flags(cls)}
