"""``python -m pararnn ...`` is the ``pararnn`` command."""

import sys

from .cli import main

sys.exit(main())
