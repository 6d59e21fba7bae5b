"""Paper figure 'bits-per-param' from a results table.

    python figures/bits_per_param.py RESULTS [--out-dir DIR (default figures/out/<results name>)]
"""

from factscale.plots.laws import script_main

if __name__ == "__main__":
    script_main("bits-per-param")
