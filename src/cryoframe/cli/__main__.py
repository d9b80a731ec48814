"""``python -m cryoframe.cli`` runs the CLI."""

import sys

from cryoframe.cli import main

sys.exit(main())
