"""``python -m llmpi.plot``: see llmpi.plot.cli."""

import sys

from .cli import main

sys.exit(main())
