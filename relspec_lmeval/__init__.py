"""relspec-lmeval: relation-specific neurons for lm-evaluation-harness.

Kept import-light: ``relspec_lmeval.model`` (torch, lm-eval) is imported only when used.
"""

__version__ = "0.1.0"
