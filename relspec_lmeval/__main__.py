"""``python -m relspec_lmeval …`` = ``relspec …`` (also under ``accelerate launch -m relspec_lmeval``)."""

import sys

from relspec_lmeval.cli import main

__all__: list[str] = []  # a script: nothing to import from it

sys.exit(main())
