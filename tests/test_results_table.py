"""``bench/results_table.py`` reads each run's row from its own files, picking generation's own sampler."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import results_table  # noqa: E402


def write_run(folder: Path, ebm: dict, chains: list[dict]) -> Path:
    folder.mkdir()
    results = {
        "config": {"dataset": "polymnist", "out": str(folder), "data_root": "data", "prior": "ebm", "ebm": ebm},
        "history": [{"epoch": 0, "steps": 10, "seconds": 60.0}, {"epoch": 1, "steps": 10, "seconds": 60.0}],
        "train_seconds": 120.0,
        "joint_coherence": 0.4,
        "joint_digits": {"top_share": 0.25},
        "aggregate_posterior_coherence": 0.45,
        "cross_coherence": {"mean": 0.7},
        "linear_probe": {"all": 0.99},
    }
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "generation_chains_m123").mkdir()
    rows = [{"sampler": "aggregate posterior q(z)", "K": None, "s": None, "start": None, "joint": 0.75}, *chains]
    (folder / "generation_chains_m123" / "generation_chains.json").write_text(json.dumps({"rows": rows}))
    return folder


CHAINS = [
    {"sampler": "p0", "K": 0, "s": None, "start": "base", "joint": 0.5},
    {"sampler": "Langevin K=500, s=0.1", "K": 500, "s": 0.1, "start": "base", "joint": 0.61},
    {"sampler": "MALA K=500, s=0.1", "K": 500, "s": 0.1, "start": "base", "joint": 0.62},
    {"sampler": "Langevin K=500, s=0.2", "K": 500, "s": 0.2, "start": "base", "joint": 0.63},
    {"sampler": "Langevin K=500, s=0.1, from the fitted Gaussian", "K": 500, "s": 0.1, "start": "noise", "joint": 0.64},
    {"sampler": "MALA K=1000, s=0.3", "K": 1000, "s": 0.3, "start": "base", "joint": 0.65},
]


@pytest.mark.parametrize(
    "generation, expected",
    [
        ({"generation_steps": 500, "generation_step_size": 0.1}, 0.61),
        ({"generation_steps": 500, "generation_step_size": 0.1, "generation_metropolis": True}, 0.62),
        ({"generation_steps": 500, "generation_step_size": 0.2}, 0.63),
        ({"generation_steps": 500, "generation_step_size": 0.1, "generation_start": "noise", "estimator": "nce",
          "nce_noise": "base+gaussian", "ceiling_margin": float("inf")}, 0.64),
        ({"generation_steps": 60}, None),  # no row for the run's own sampler
        ({"estimator": "nce", "ceiling_margin": 2.0}, 0.65),  # bounded: settled chains by default
        ({"estimator": "nce", "ceiling_margin": 2.0, "generation_steps": 500, "generation_step_size": 0.1,
          "generation_metropolis": False}, 0.61),
    ],
)
def test_the_row_reads_the_run_s_own_generation_sampler(tmp_path, generation, expected):
    ebm = {"langevin": {"steps": 50, "step_size": 0.1}, **generation}
    row = results_table.table_row("run", write_run(tmp_path / "run", ebm, CHAINS))
    assert row["joint m1–m3"] == expected and row["ceiling m1–m3"] == 0.75
    assert (row["epochs"], row["steps"], row["train"]) == (2, 20, "2 min")
    assert row["joint all five (top)"] == "0.400 (0.25)" and row["cross"] == 0.7 and row["probe"] == 0.99


def test_the_all_five_ceiling_of_generation_chains_replaces_the_run_s_own(tmp_path):
    folder = write_run(tmp_path / "run", {"langevin": {"steps": 500, "step_size": 0.1}}, CHAINS)
    assert results_table.table_row("run", folder)["ceiling"] == 0.45
    (folder / "generation_chains").mkdir()
    rows = [{"sampler": "aggregate posterior q(z)", "joint": 0.47}]
    (folder / "generation_chains" / "generation_chains.json").write_text(json.dumps({"rows": rows}))
    assert results_table.table_row("run", folder)["ceiling"] == 0.47


def test_a_folder_without_results_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="need LABEL=FOLDER with FOLDER/results.json"):
        results_table.main(results_table.build_parser().parse_args([f"run={tmp_path}"]))
