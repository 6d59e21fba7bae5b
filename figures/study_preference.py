"""The preference study's figure from its results table (see sweeps/study-preference.yaml for how to make it)."""

from factscale.plots.laws import script_main

if __name__ == "__main__":
    script_main("study-preference")
