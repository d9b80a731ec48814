"""``python -m cryoframe`` runs the CLI."""

import sys

from cryoframe.cli import main

sys.exit(main())
