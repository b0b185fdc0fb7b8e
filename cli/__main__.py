"""`python -m cli` runs the `retl` command (as `retl up` does for its children)."""

from cli.main import cli

cli()
