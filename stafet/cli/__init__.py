"""The ``stafet`` command line (:func:`main`); ``python -m stafet.cli`` runs it too."""

from stafet.cli.commands import main

__all__ = ["main"]
