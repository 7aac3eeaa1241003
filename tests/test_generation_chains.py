"""``bench/generation_chains.py`` on a smoke run: one row per sampler, each gap measured against the
posterior's ``f``, a diverging sampler reported in its row while the others still run."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import generation_chains  # noqa: E402

from pyro_mmebm.ebm.langevin import LangevinDivergenceError  # noqa: E402
from pyro_mmebm.ebm.tilted_laplace import TiltedLaplace  # noqa: E402
from pyro_mmebm.experiment import run  # noqa: E402
from tests.test_examples import _smoke  # noqa: E402


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, Path]:
    """A trained EBM run (two epochs, the tilt trained in the second) and a Laplace run."""
    root = tmp_path_factory.mktemp("generation_chains")
    return {prior: Path(run(_smoke(root, prior, prior=prior), progress=False)["config"]["out"])
            for prior in ("ebm", "laplace")}


def analyse(run_folder: Path, out: Path, *options: str) -> dict:
    args = generation_chains.build_parser().parse_args(
        ["--run", str(run_folder), "--out", str(out), "--samples", "16", "--eval-size", "12", *options]
    )
    return generation_chains.main(args)


def test_every_sampler_has_a_row_with_its_gap_to_the_posterior(smoke_runs, tmp_path):
    results = analyse(smoke_runs["ebm"], tmp_path, "--steps", "0", "3", "--step-sizes", "0.05", "0.1")
    rows = results["rows"]
    assert [row["sampler"] for row in rows] == [  # the run's own adjustment: a bounded prior's is MALA
        "aggregate posterior q(z)", "p0", "MALA K=3, s=0.05", "MALA K=3, s=0.1",
    ]
    f_posterior = rows[0]["f_mean"]
    for row in rows[1:]:
        assert row["gap"] == pytest.approx(f_posterior - row["f_mean"])
        assert 0.0 <= row["joint"] <= 1.0 and row["s_per_1000"] > 0
    assert rows[1]["s"] is None and rows[2]["s"] == 0.05
    saved = json.loads((tmp_path / "generation_chains.json").read_text())
    assert [row["sampler"] for row in saved["rows"]] == [row["sampler"] for row in rows]
    assert (tmp_path / "generation_chains.md").is_file() and (tmp_path / "generation_f_histograms.png").is_file()


def test_a_diverging_sampler_is_reported_and_the_others_still_run(smoke_runs, tmp_path, monkeypatch):
    original = TiltedLaplace.generation_run

    def diverge_at_the_larger_step(self, sample_shape):
        if self.generation.step_size > 0.07:
            raise LangevinDivergenceError("chains left the finite numbers at step 2")
        return original(self, sample_shape)

    monkeypatch.setattr(TiltedLaplace, "generation_run", diverge_at_the_larger_step)
    options = ("--steps", "3", "--step-sizes", "0.1", "0.05", "--adjust", "ula")
    rows = analyse(smoke_runs["ebm"], tmp_path, *options)["rows"]
    assert rows[1] == {"sampler": "Langevin K=3, s=0.1", "start": "base", "K": 3, "s": 0.1,
                       "diverged": "chains left the finite numbers at step 2"}
    assert rows[2]["sampler"] == "Langevin K=3, s=0.05" and "gap" in rows[2]


def test_a_run_with_another_prior_gets_the_ceiling_and_its_prior(smoke_runs, tmp_path):
    rows = analyse(smoke_runs["laplace"], tmp_path)["rows"]
    assert [row["sampler"] for row in rows] == ["aggregate posterior q(z)", "prior (laplace)"]
    assert all(0.0 <= row["joint"] <= 1.0 for row in rows)
