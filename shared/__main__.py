"""``python -m shared``: the operator and sender command line (see :mod:`shared.cli`)."""

import sys

from shared.cli import main

sys.exit(main())
