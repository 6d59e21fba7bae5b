"""Stage 4, model -> per-fact results -> measures: exact match and code length of every probed fact in one
batched forward pass (``engine``), and what they mean per set and group (``measures``: priors, the probe
sample, capacity in facts and bits with standard errors). Imports the base and ``corpus``."""
