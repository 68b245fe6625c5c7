"""``python -m glora.sweep``: see glora/sweep/cli.py."""
from glora.sweep.cli import cli

cli()
