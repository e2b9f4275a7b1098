"""``python -m cstbatch`` is the ``cstbatch`` command."""
import sys

from cstbatch.cli import main

sys.exit(main())
