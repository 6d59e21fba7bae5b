"""Paper figure 'extrapolation' from a results table.

    python figures/extrapolation.py RESULTS [--out-dir DIR (default figures/out/<results name>)]
"""

from factscale.plots.laws import script_main

if __name__ == "__main__":
    script_main("extrapolation")
