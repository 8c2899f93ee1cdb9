"""``python -m xnatfs.fake``: run the fake XNAT server from the command line."""

import sys

from .cli import main

sys.exit(main())
