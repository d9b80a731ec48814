"""``python -m cryoframe`` runs the CLI."""

from cryoframe.cli import run

run()
