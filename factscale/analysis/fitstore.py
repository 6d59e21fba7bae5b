"""Fits as artifacts: where figures and the demo get a law's fit.

``factscale fit`` saves each fit as JSON with the results table it came from (path and sha256). A figure
draws a saved fit when one matches (same law, same selection): ``Fits(df, fits_dir, results_sha)``. A fit
saved from another results table is refused, never drawn over these points. Where no fit was saved, the
figure fits once, with the fit command's defaults (200 bootstrap draws, least squares, annealed end
points), and the same ``Fits`` object serves every later request: a figure and the fit it illustrates
cannot disagree, and nothing is fitted twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from factscale.analysis.fit import MAX_FILL, fit_law
from factscale.analysis.laws import LAWS
from factscale.analysis.vocab import ALIASES
from factscale.errors import FitError
from factscale.fsio import file_sha256

N_BOOT = 200  # the fit command's default (factscale fit --bootstrap)


def selection_key(law: str, where: dict | None, measure: str | None = None, max_fill: float | None = None) -> tuple:
    """(law, where, measure, max_fill) with aliases resolved and values compared as numbers where they are
    numbers, so the CLI's ``--where epochs=100`` and a figure's ``{"epoch": 100}`` name the same fit; a fit
    of another measure (``--measure capacity_above_chance``) or that keeps other sizes (``--max-fill``) is
    another fit."""
    def value(v):
        try:
            return repr(float(v))
        except (TypeError, ValueError):
            return str(v)

    default = LAWS[law].y if law in LAWS else None
    capped = law in LAWS and LAWS[law].capped_sizes
    return (law, tuple(sorted((ALIASES.get(k, k), value(v)) for k, v in (where or {}).items())), measure or default,
            value(max_fill if max_fill is not None else 1.0) if capped else None)


def results_identity(path: str | Path) -> dict:
    p = Path(path)
    return {"path": str(p), "sha256": file_sha256(p)}


class Fits:
    """Saved fits of one results table, and fits made on demand (with the fit command's defaults)."""

    def __init__(self, df: pl.DataFrame, fits_dir: str | Path | None = None, results_sha: str | None = None,
                 n_boot: int = N_BOOT, measure: str = "capacity", max_fill: float | None = MAX_FILL):
        self.df, self.n_boot, self.measure, self.max_fill = df, n_boot, measure, max_fill
        self.saved: dict[tuple, dict] = {}
        self.made: dict[tuple, dict | FitError] = {}
        if fits_dir is not None:
            d = Path(fits_dir)
            if not d.is_dir():
                raise FitError(f"--fits {fits_dir}: not a directory of saved fits (made by `factscale fit`)")
            for p in sorted(d.glob("*.json")):
                try:
                    r = json.loads(p.read_text())
                except (OSError, ValueError) as e:
                    raise FitError(f"{p}: not a saved fit ({e})") from None
                if not isinstance(r, dict) or "law" not in r or "params" not in r:
                    continue  # another JSON file beside the fits (a summary): not a fit
                made_from = (r.get("results") or {}).get("sha256")
                if results_sha is not None and made_from is not None and made_from != results_sha:
                    raise FitError(f"{p} was fitted on another results table ({r['results'].get('path')}, sha256 "
                                   f"{made_from[:12]}), not this one ({results_sha[:12]}): refit it or leave out --fits")
                self.saved[selection_key(r["law"], r.get("where"), r.get("measure"), r.get("max_fill"))] = r

    def get(self, law: str, where: dict | None = None) -> dict:
        """The fit of ``law`` on the rows ``where`` selects: the saved one, else fitted once (FitError if the
        data cannot support it, raised again on every request)."""
        measure = self.measure if law in LAWS and LAWS[law].y == "capacity" else None
        key = selection_key(law, where, measure, self.max_fill)
        if key in self.saved:
            return self.saved[key]
        if key not in self.made:
            try:
                self.made[key] = fit_law(self.df, law, where, n_boot=self.n_boot, measure=measure,
                                         max_fill=self.max_fill)
            except FitError as e:
                self.made[key] = e
        r = self.made[key]
        if isinstance(r, FitError):
            raise r
        return r


def saved_fits(df: pl.DataFrame, results_path: str | Path, fits_dir: str | Path | None, measure: str = "capacity",
               max_fill: float | None = MAX_FILL) -> Fits:
    """The laws of a figure command: the saved fits in ``--fits DIR`` of the table at ``results_path`` (checked
    against its sha256), else fits made on demand, of ``measure`` with ``max_fill``."""
    sha = results_identity(results_path)["sha256"] if fits_dir else None
    return Fits(df, fits_dir, sha, measure=measure, max_fill=max_fill)


def default_dir(kind: str, results_path: str | Path) -> Path:
    """``fits/out/<table>`` or ``figures/out/<table>``: outputs of different results tables never collide."""
    return Path(kind) / "out" / Path(results_path).stem
