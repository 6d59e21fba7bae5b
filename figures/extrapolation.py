"""Paper figure 'extrapolation' from a results table.

    python figures/extrapolation.py RESULTS [--out-dir figures/out]
"""

from factscale.plots.laws import script_main

if __name__ == "__main__":
    script_main("extrapolation")
