"""Paper figure 'mr-vs-facts' from a results table.

    python figures/mr_vs_facts.py RESULTS [--out-dir DIR (default figures/out/<results name>)]
"""

from factscale.plots.laws import script_main

if __name__ == "__main__":
    script_main("mr-vs-facts")
