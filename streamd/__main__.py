"""``python -m streamd`` is the ``streamd`` command."""

import sys

from streamd.cli import main

sys.exit(main())
