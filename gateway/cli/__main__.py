"""``python -m gateway.cli`` runs the ``metanoia`` console script."""

import sys

from gateway.cli import main

sys.exit(main())
