"""One family of user errors. Every error a user can cause (a bad config, a corpus that cannot be built, a
fit or figure the data cannot support, a busy run) is a ``FactscaleError``: the CLI catches the base class
and prints one ``error:`` line (exit 2); anything else is a bug and keeps its traceback."""

from __future__ import annotations


class FactscaleError(Exception):
    """Base of every user-facing error; the message says what is wrong and, where it can, how to fix it."""


class ConfigError(FactscaleError, ValueError):
    """A config field is missing, unknown or out of range; the message names the field."""


class CorpusError(FactscaleError, ValueError):
    """The corpus cannot be built or read (no facts left, bad option, foreign directory)."""


class CollectError(FactscaleError, ValueError):
    """A runs directory or results table cannot be collected or read."""


class FitError(FactscaleError, ValueError):
    """The data cannot support this fit; the message says why."""


class PlotError(FactscaleError, ValueError):
    """The results table cannot support this figure or study table (the message says what is missing)."""


class RunBusy(FactscaleError, RuntimeError):
    """Another process holds this run's lock (a concurrent launch); this one does nothing."""


class Terminated(KeyboardInterrupt):
    """SIGTERM during a corpus build, raised as an interrupt so that it unwinds like Ctrl-C: shard jobs are
    cancelled and no corpus is left half-written (the CLI exits 143)."""
