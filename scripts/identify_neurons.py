#!/usr/bin/env python
"""Thin wrapper: ``python scripts/identify_neurons.py ARGS`` = ``relspec identify ARGS``.

The design card's "separate identification script"; the code lives in relspec_lmeval.identify.
"""

import sys

from relspec_lmeval.cli import main

if __name__ == "__main__":
    sys.exit(main(["identify", *sys.argv[1:]]))
