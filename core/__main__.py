"""``python -m core label|count|search|embed ...`` (same as the ``remoteclip`` command)."""

import sys

from .cli import main

sys.exit(main())
