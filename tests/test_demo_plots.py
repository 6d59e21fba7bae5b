"""The main job end to end (quick grid), the figures it draws and the fit/plot CLIs on its results."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest
from PIL import Image

from factscale import plots


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "d"
    r = subprocess.run([sys.executable, "-m", "factscale.cli", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


@pytest.mark.slow
def test_quick_demo_end_to_end(quick_demo):
    out, stdout = quick_demo
    assert "=== factscale demo summary ===" in stdout
    df = pl.read_parquet(out / "results.parquet")
    assert df["run_id"].n_unique() == 3
    fits = {p.stem: json.loads(p.read_text()) for p in (out / "fits").glob("*.json")}
    assert "linear-size-epoch60" in fits and "joint" in fits
    lin = fits["linear-size-epoch60"]
    assert lin["n_points"] == 3 and lin["params"]["k"]["value"] > 0  # bigger models memorize more
    final = df.filter((pl.col("split") == "train") & (pl.col("group_by") == "all") & (pl.col("epoch") == 60))
    caps = final.sort("non_embedding_params")["capacity"].to_list()
    assert caps == sorted(caps) and caps[-1] > caps[0]
    summary = json.loads((out / "summary.json").read_text())
    drawn = summary["figures"]["drawn"]
    for name in ("mr-curves", "capacity-vs-size", "capacity-vs-epochs", "bits-per-param"):
        png = drawn[name][0]
        w, h = Image.open(png).size
        assert w > 300 and h > 200
    assert "generalization" in summary["figures"]["skipped"]  # needs a corpus-size axis: said, not faked


@pytest.mark.slow
def test_fit_and_plot_cli_on_demo_results(quick_demo, tmp_path):
    out, _ = quick_demo
    res = out / "results.parquet"
    r = subprocess.run([sys.executable, "-m", "factscale.cli", "fit", str(res), "--law", "joint", "--solve",
                        "facts=1e6,epochs=100", "--out-dir", str(tmp_path), "--bootstrap", "50"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "non-embedding params" in r.stdout and "R^2" in r.stdout
    saved = json.loads((tmp_path / "joint.json").read_text())
    assert saved["solve"]["facts"] == 1e6 and saved["solve"]["non_embedding_params"] > 0
    bad = subprocess.run([sys.executable, "-m", "factscale.cli", "fit", str(res), "--law", "exp-epochs"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "fixed size" in bad.stderr and "Traceback" not in bad.stderr
    p = subprocess.run([sys.executable, "-m", "factscale.cli", "plot", "capacity-vs-epochs", str(res), "--out-dir",
                        str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0 and (tmp_path / "capacity-vs-epochs.pdf").exists()
    with pytest.raises(plots.PlotError, match="corpus sizes"):
        plots.plot("mr-vs-facts", pl.read_parquet(res), tmp_path)
