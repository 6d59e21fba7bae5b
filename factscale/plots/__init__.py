"""Stage 7, results and fits -> figures (seaborn): the law figures and their registry (``laws``: ``FIGURES``,
``plot``, ``plot_all``) and the behaviour-study figures (``studies``). Titles say what is plotted, never
what a paper concluded. Reads ``analysis`` only: never ``corpus``, ``training`` or ``launch``."""

from factscale.errors import PlotError
from factscale.plots.laws import FIGURES, plot, plot_all, save, script_main

__all__ = ["FIGURES", "PlotError", "plot", "plot_all", "save", "script_main"]
