"""``python -m xnatfs`` runs the ``xnatfs`` command."""

import sys

from xnatfs.cli import main

sys.exit(main())
