"""``python -m relspec_lmeval …`` = ``relspec …`` (also under ``accelerate launch -m relspec_lmeval``)."""

import sys

from relspec_lmeval.cli import main

sys.exit(main())
