"""Paper figure 'bits-vs-data' from a results table.

    python figures/bits_vs_data.py RESULTS [--out-dir DIR (default figures/out/<results name>)]
"""

from factscale.plots.laws import script_main

if __name__ == "__main__":
    script_main("bits-vs-data")
