"""``python -m cstbatch`` is the ``cstbatch`` command."""
import sys

from .cli import main

sys.exit(main())
