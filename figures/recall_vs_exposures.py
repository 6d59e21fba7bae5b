"""Paper figure 'recall-vs-exposures' from a results table.

    python figures/recall_vs_exposures.py RESULTS [--out-dir DIR (default figures/out/<results name>)]
"""

from factscale.plots.laws import script_main

if __name__ == "__main__":
    script_main("recall-vs-exposures")
