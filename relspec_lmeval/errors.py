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
    "ModelError",
    "NeuronSetError",
    "OutputError",
    "RelspecError",
    "UnsupportedModelError",
    "UsageError",
]


class RelspecError(Exception):
    """Base class: a problem the user can fix; the message says which and how.

    ``relspec`` prints one as ``relspec: error: <message>`` and exits with status 2; from Python,
    catch it to handle every user error at once.

    Example:
        >>> from relspec_lmeval import NeuronSet, RelspecError
        >>> try:
        ...     NeuronSet.load("no/such/set.safetensors")
        ... except RelspecError as exc:
        ...     print(type(exc).__name__, "-", exc)
        NeuronSetError - neuron-set file not found: no/such/set.safetensors
    """


class UsageError(RelspecError, ValueError):
    """A flag, argument or combination of them that cannot be used."""


class NeuronSetError(RelspecError, ValueError):
    """A neuron-set or scores file (or a set argument) that cannot be used.

    Also a ``ValueError``, so code written against plain Python errors keeps working.

    Example:
        >>> from relspec_lmeval import ModelShape, NeuronSetError
        >>> try:
        ...     ModelShape(num_layers=0, hidden_size=4, intermediate_size=8)
        ... except NeuronSetError as exc:
        ...     print(exc)
        model shape: num_layers must be a positive integer, got 0
        >>> issubclass(NeuronSetError, ValueError)
        True
    """


class DataError(RelspecError, ValueError):
    """Relation data that cannot be found, fetched, verified or read (names the file)."""


class ModelError(RelspecError, ValueError):
    """A model (or its config/tokenizer) that cannot be loaded or does not fit the request."""


class UnsupportedModelError(ModelError):
    """The model's MLPs are not separate gate_proj/up_proj/down_proj linear layers."""


class OutputError(RelspecError, OSError):
    """An output that must not or could not be written (shipped files, full disk, a non-empty folder)."""
