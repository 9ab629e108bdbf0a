"""``python -m gradc demo``: the same as the ``gradc`` command."""
import sys

from .cli import main

sys.exit(main())
