"""The ``factscale`` command: thin subcommands over the library (``main``; corpus subcommands in ``corpus``).
Every user error is one ``error:`` line and exit 2."""

from factscale.cli.main import main

__all__ = ["main"]
