"""Paper figure 'capacity-vs-epochs' from a results table.

    python figures/capacity_vs_epochs.py RESULTS [--out-dir DIR (default figures/out/<results name>)]
"""

from factscale.plots.laws import script_main

if __name__ == "__main__":
    script_main("capacity-vs-epochs")
