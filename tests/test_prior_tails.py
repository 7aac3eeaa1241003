"""``bench/prior_tails.py`` on smoke runs: a row per EBM run with its excess slope, the log density along
the worst direction and where generation's chains end; a run with another prior refused by name."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import prior_tails  # noqa: E402

from pyro_mmebm.ebm import tail_growth  # noqa: E402
from pyro_mmebm.experiment import load_run, run  # noqa: E402
from tests.test_examples import _smoke  # noqa: E402


@pytest.mark.parametrize("ceiling_margin", [math.inf, 2.0])
def test_a_row_per_run_agrees_with_tail_growth_and_is_saved(tmp_path, ceiling_margin):
    config = _smoke(tmp_path, "ebm", prior="ebm", ebm_ceiling_margin=ceiling_margin)
    folder = run(config, progress=False)["config"]["out"]
    out = tmp_path / "tails.json"
    (row,) = prior_tails.main(prior_tails.build_parser().parse_args([folder, "--samples", "50", "--out", str(out)]))
    _, model, *_ = load_run(folder, torch.device("cpu"))
    prior = model.prior()
    tails = tail_growth(prior)
    assert row["excess_slope"] == tails.excess and row["normalisable"] == tails.normalisable
    with torch.no_grad():
        expected = prior.log_prob(prior.loc + 30 * tails.direction) - prior.log_prob(prior.loc)
    assert row["log p(t=30) - log p(0)"] == pytest.approx(float(expected), abs=1e-4)
    assert 0 < row["generated distance median"] <= row["generated distance max"]
    assert row["generated along it max"] <= row["generated distance max"]
    assert json.loads(out.read_text())["rows"][0]["excess_slope"] == row["excess_slope"]
    if math.isinf(ceiling_margin):
        assert row["ceiling"] is None
    else:  # the bound: f never exceeds it, and far out the prior falls as p0 does
        assert row["ceiling"] == pytest.approx(float(model.prior.energy.ceiling)) and row["normalisable"]
        with torch.no_grad():
            assert float(model.prior.energy(1e3 * torch.randn(100, prior.loc.shape[-1])).max()) <= row["ceiling"]


def test_a_run_without_an_ebm_prior_is_refused_by_name(tmp_path):
    folder = run(_smoke(tmp_path, "laplace", prior="laplace"), progress=False)["config"]["out"]
    with pytest.raises(SystemExit, match="has a laplace prior, not an EBM"):
        prior_tails.main(prior_tails.build_parser().parse_args([folder]))
