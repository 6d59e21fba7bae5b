"""Fits are artifacts: a figure draws the fit `factscale fit` saved from the same results table, refuses
one saved from another table, and fits a law once (with the fit command's defaults) when none was saved."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_fit import simulate

from factscale.analysis import fitstore
from factscale.analysis.fitstore import Fits, selection_key
from factscale.errors import FitError

pytestmark = pytest.mark.unit

TRUTH = {"k": 2.0, "c": 100.0}


@pytest.fixture()
def results(tmp_path):
    df = simulate("linear", TRUTH, np.random.default_rng(0), seeds=2, budgets=(100,))
    path = tmp_path / "results.parquet"
    df.write_parquet(path)
    return df, path


def test_the_cli_and_a_figure_name_the_same_selection():
    assert selection_key("linear-size", {"epochs": "100"}) == selection_key("linear-size", {"epoch": 100})
    assert selection_key("linear-size", {"epoch": 100}) != selection_key("linear-size", {"epoch": 50})


def test_a_figure_draws_the_saved_fit_and_fits_nothing(results, tmp_path, monkeypatch, capsys):
    from factscale.cli.main import main
    from factscale.plots.laws import fig_capacity_vs_size

    df, path = results
    main(["fit", str(path), "--law", "linear-size", "--where", "epochs=100", "--bootstrap", "20", "--robust",
          "--out-dir", str(tmp_path / "fits")])
    saved = json.loads(next((tmp_path / "fits").glob("*.json")).read_text())
    assert saved["results"]["sha256"] == fitstore.file_sha256(path) and saved["robust"] is True

    def no_fitting(*a, **k):
        raise AssertionError("a saved fit was fitted again")

    monkeypatch.setattr(fitstore, "fit_law", no_fitting)
    fits = Fits(df, tmp_path / "fits", fitstore.file_sha256(path))
    r = fits.get("linear-size", {"epoch": 100})
    assert r["params"]["k"]["value"] == saved["params"]["k"]["value"] and r["bootstrap"]["n_requested"] == 20
    fig_capacity_vs_size(df, fits=fits)  # draws from the saved fit: fit_law is never called
    capsys.readouterr()
    main(["plot", "capacity-vs-size", str(path), "--fits", str(tmp_path / "fits"), "--out-dir", str(tmp_path / "f")])
    assert (tmp_path / "f" / "capacity-vs-size.png").exists()


def test_a_fit_saved_from_another_results_table_is_refused(results, tmp_path):
    from factscale.analysis.fit import fit_law, save_fit

    df, path = results
    r = fit_law(df, "linear-size", {"epoch": 100}, n_boot=0)
    r["results"] = {"path": "other.parquet", "sha256": "0" * 64}
    save_fit(r, tmp_path / "fits" / "linear-size.json")
    with pytest.raises(FitError, match="fitted on another results table"):
        Fits(df, tmp_path / "fits", fitstore.file_sha256(path))


def test_without_saved_fits_each_law_is_fitted_once_with_the_fit_commands_defaults(results, monkeypatch):
    df, _ = results
    calls = []
    real = fitstore.fit_law

    def counting(*a, **k):
        calls.append((a[1], k.get("n_boot")))
        return real(*a, **{**k, "n_boot": 5})  # the count is what is tested, not the bootstrap

    monkeypatch.setattr(fitstore, "fit_law", counting)
    fits = Fits(df)
    a, b = fits.get("linear-size", {"epoch": 100}), fits.get("linear-size", {"epochs": "100"})
    assert a is b and calls == [("linear-size", fitstore.N_BOOT)] and fitstore.N_BOOT == 200
    with pytest.raises(FitError):
        fits.get("exp-epochs", {"size": "s1"})  # one budget per size: no epoch law
    with pytest.raises(FitError):
        fits.get("exp-epochs", {"size": "s1"})  # the refusal is remembered, not fitted again
    assert len(calls) == 2


def test_a_fit_of_another_measure_is_another_fit(results, tmp_path, monkeypatch):
    from factscale.analysis.fit import fit_law, save_fit

    df, path = results
    df = df.with_columns(capacity_above_chance=df["capacity"] * 0.5)
    r = fit_law(df, "linear-size", {"epoch": 100}, n_boot=0, measure="capacity_above_chance")
    assert r["measure"] == "capacity_above_chance" and r["params"]["k"]["value"] == pytest.approx(1.0, rel=0.1)
    save_fit(r, tmp_path / "fits" / "linear-size.json")
    fits = Fits(df, tmp_path / "fits")
    saved = fits.saved[selection_key("linear-size", {"epoch": 100}, "capacity_above_chance", 0.6)]
    assert fits.get("linear-size", {"epoch": 100}) is not saved
    # figures of the chance-corrected measure draw it; a fit keeping capped sizes (--max-fill 1) is another fit
    other = Fits(df, tmp_path / "fits", measure="capacity_above_chance")
    assert other.get("linear-size", {"epoch": 100}) is other.saved[selection_key("linear-size", {"epoch": 100},
                                                                                  "capacity_above_chance", 0.6)]
    keep = Fits(df, tmp_path / "fits", measure="capacity_above_chance", max_fill=1.0)
    assert keep.get("linear-size", {"epoch": 100}) not in keep.saved.values()
    with pytest.raises(FitError, match="--measure"):
        fit_law(df, "power-gen", measure="capacity_above_chance")
