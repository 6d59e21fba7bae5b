"""Stage 3, tokens -> model -> probe rows: one run, from its config to its result rows.

- ``config``: the run config (``RunConfig``), every field documented where declared;
- ``models``: the size registry and exact parameter counts; ``data``: packing, per-epoch order, phases;
- ``module``: the LightningModule (schedule, isolated attention, loss on scored tokens, AdamW);
- ``run``: ``run()``, the Trainer, preflight checks; ``rundir``: the run-directory protocol (identity, lock,
  attempts, checkpoints, errors, results); ``callbacks``: checkpoints, epoch loss, faults, loggers and the
  probe callback; ``rows``: a finished run's result rows.

Imports the base, ``corpus`` and ``probing``.
"""
