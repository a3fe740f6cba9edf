"""The one error hierarchy: every failure a user can cause is a ``RelspecError``.

The ``relspec`` command turns any of them into one ``relspec: error: <message>`` line and
exit status 2 (``cli.main``); lm-eval shows them as the exception they are. Each message
names the thing that is wrong (a file, a flag, a relation) and, where it can, what exists.

The classes also derive from the built-in a caller would have caught before this module
existed (``ValueError``, ``OSError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "LREDataError",
    "ModelError",
    "NeuronSetError",
    "OutputError",
    "RelspecError",
    "UnsupportedModelError",
    "UsageError",
]


class RelspecError(Exception):
    """Base class: a problem the user can fix; the message says which and how."""


class UsageError(RelspecError, ValueError):
    """A flag, argument or combination of them that cannot be used."""


class NeuronSetError(RelspecError, ValueError):
    """A neuron-set or scores file (or a set argument) that cannot be used."""


class DataError(RelspecError, ValueError):
    """Relation data that cannot be found, fetched, verified or read (names the file)."""


LREDataError = DataError  # the name earlier releases raised


class ModelError(RelspecError, ValueError):
    """A model (or its config/tokenizer) that cannot be loaded or does not fit the request."""


class UnsupportedModelError(ModelError):
    """The model's MLPs are not separate gate_proj/up_proj/down_proj linear layers."""


class OutputError(RelspecError, OSError):
    """An output that must not or could not be written (shipped files, full disk, a non-empty folder)."""
