"""Stage 5, many runs: a sweep spec (``spec``: base config x grid, resources, corpus recipe), planning,
launching and status on a cluster (``sweep``, through ``factscale.cluster``), and cooldown branches of one
warmup-stable-decay trunk (``branches``). Imports the base, ``corpus`` and ``training``."""
