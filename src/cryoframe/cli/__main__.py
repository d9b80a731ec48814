"""``python -m cryoframe.cli`` runs the CLI."""

from cryoframe.cli import run

run()
