"""``python -m palmnode``: the same as the ``palmnode`` command."""
import sys

from palmnode.cli import main

sys.exit(main())
