"""The protocol's scheduler: an EBM run starts from its Laplace run's warm-up checkpoint instead of
repeating the warm-up, and runs it itself when that checkpoint cannot be had; recipe variants fork
from any checkpoint past the warm-up."""

import json
import sys
import textwrap
from pathlib import Path

import matplotlib.axes
import pytest
import torch

from pyro_mmebm.checkpoint import read_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import ebm_recipe  # noqa: E402
import polymnist_protocol  # noqa: E402

# A stand-in for a Laplace run of `examples/polymnist.py`: four epochs of a second, each ending as `fit`
# ends one (checkpoint first, then the metrics), then its results.
FAKE_LAPLACE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import torch
    from pyro_mmebm.checkpoint import save_checkpoint
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    history = []
    for epoch in range(4):
        time.sleep(1.0)
        history.append({"epoch": epoch, "seconds": 1.0})
        save_checkpoint(out, {"model": torch.nn.Linear(1, 1)}, None, epoch=epoch, history=history)
        (out / "metrics.json").write_text(json.dumps(history))
    (out / "results.json").write_text(json.dumps({"history": history}))
    """
)

# A stand-in for the EBM run: records the options it was started with.
FAKE_EBM = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"


def commands(out: Path) -> dict[str, list[str]]:
    return {
        "laplace": [sys.executable, "-c", FAKE_LAPLACE, str(out / "laplace")],
        "ebm": [sys.executable, "-c", FAKE_EBM, str(out / "ebm_options.json")],
    }


def test_warmup_epochs_are_read_from_the_ebm_options_else_the_examples_default():
    assert polymnist_protocol.warmup_epochs("--langevin-steps 60 --ebm-warmup-epochs 3 --prior-lr 2e-5") == 3
    assert polymnist_protocol.warmup_epochs("--ebm-warmup-epochs 0") == 0
    assert polymnist_protocol.example_warmup_epochs() == 2  # examples/polymnist.py's DEFAULTS
    assert polymnist_protocol.warmup_epochs("--langevin-steps 60") == 2


def test_ebm_run_starts_from_the_laplace_runs_warmup_checkpoint(tmp_path):
    codes = polymnist_protocol.schedule(
        commands(tmp_path), tmp_path, parallel=2, resume=False, epochs={"laplace": 4, "ebm": 4}, fork_after=2, poll_s=0.05
    )
    assert codes == {"laplace": 0, "ebm": 0}
    kept = polymnist_protocol.warmup_checkpoint(tmp_path / "laplace", 2)
    assert read_checkpoint(kept)["epoch"] == 1  # the end of the second epoch, not the run's last
    assert read_checkpoint(tmp_path / "laplace")["epoch"] == 3
    options = json.loads((tmp_path / "ebm_options.json").read_text())
    assert options == ["--start-from", str(kept)]


def test_without_a_warmup_the_ebm_run_starts_at_once(tmp_path):
    codes = polymnist_protocol.schedule(
        commands(tmp_path), tmp_path, parallel=2, resume=False, epochs={"laplace": 4, "ebm": 4}, fork_after=0, poll_s=0.05
    )
    assert codes == {"laplace": 0, "ebm": 0}
    assert json.loads((tmp_path / "ebm_options.json").read_text()) == []
    assert not polymnist_protocol.warmup_checkpoint(tmp_path / "laplace", 2).exists()


def test_ebm_run_repeats_the_warmup_when_its_checkpoint_is_gone(tmp_path):
    """The Laplace run finished earlier (not scheduled here) and nobody kept its epoch-2 checkpoint."""
    polymnist_protocol.schedule(
        {"laplace": commands(tmp_path)["laplace"]}, tmp_path, parallel=1, resume=False, epochs={"laplace": 4},
        fork_after=2, poll_s=0.05,
    )
    assert not polymnist_protocol.warmup_checkpoint(tmp_path / "laplace", 2).exists()
    codes = polymnist_protocol.schedule(
        commands(tmp_path), tmp_path, parallel=2, resume=False, epochs={"laplace": 4, "ebm": 4}, fork_after=2, poll_s=0.05
    )
    assert codes == {"ebm": 0}  # the finished Laplace run is not run again
    assert json.loads((tmp_path / "ebm_options.json").read_text()) == []


@pytest.mark.parametrize("epochs_done", [1, 3])
def test_keep_warmup_checkpoint_only_at_that_epoch(tmp_path, epochs_done):
    history = [{"epoch": e} for e in range(epochs_done)]
    save_checkpoint(tmp_path, {"model": torch.nn.Linear(1, 1)}, None, epoch=epochs_done - 1, history=history)
    (tmp_path / "metrics.json").write_text(json.dumps(history))
    assert polymnist_protocol.keep_warmup_checkpoint(tmp_path, 2) is None
    assert not list(tmp_path.glob("checkpoint_epoch*"))


def test_recipe_forks_continue_after_the_checkpoints_epochs(tmp_path):
    save_checkpoint(tmp_path / "early", {"model": torch.nn.Linear(1, 1)}, None, epoch=0, history=[{"epoch": 0}])
    with pytest.raises(SystemExit, match="inside the recipe's 2-epoch warm-up"):
        ebm_recipe.fork_epochs(str(tmp_path / "early" / "checkpoint.pt"))
    history = [{"epoch": e} for e in range(4)]
    save_checkpoint(tmp_path / "late", {"model": torch.nn.Linear(1, 1)}, None, epoch=3, history=history)
    fork = str(tmp_path / "late" / "checkpoint.pt")
    assert ebm_recipe.fork_epochs(fork) == 4
    args = ebm_recipe.build_parser().parse_args(
        ["--fork", fork, "--out", str(tmp_path / "out"), "--settings", "today", "--steps", "500", "--chunk", "250",
         "--run-options", "--private-latent-dim 32"]
    )
    (command,) = ebm_recipe.commands(args, ebm_recipe.fork_epochs(fork)).values()
    assert command[command.index("--epochs") + 1] == "6"  # 4 forked + 500 steps in chunks of 250
    assert command[command.index("--private-latent-dim") + 1] == "32"


def test_private_two_stage_run_fits_the_private_laplace_run(tmp_path):
    args = polymnist_protocol.build_parser().parse_args(["--out", str(tmp_path), "--ebm-options", "--prior-lr 2e-5"])
    commands = polymnist_protocol.run_commands(args)
    command = commands["two_stage_private"]
    assert command[command.index("--two-stage-from") + 1] == str(tmp_path / "laplace_private")
    assert "--prior-lr" in command and "--private-latent-dim" not in command  # the networks are the first stage's
    assert polymnist_protocol.DEPENDS_ON["two_stage_private"] == "laplace_private"


def test_two_stage_fits_take_their_own_batch_size(tmp_path):
    args = polymnist_protocol.build_parser().parse_args(
        ["--out", str(tmp_path), "--runs", *polymnist_protocol.RUNS, "--batch-size", "32", "--two-stage-batch-size", "64"]
    )
    commands = polymnist_protocol.run_commands(args)
    for name, command in commands.items():
        assert command.count("--batch-size") == 1
        assert command[command.index("--batch-size") + 1] == ("64" if name in polymnist_protocol.DEPENDS_ON else "32")


def test_defaults_are_the_measured_protocol(tmp_path, capsys):
    """Without options: MMVAE+, Ours+ and two-stage Ours+, batch 32, 12 epochs, two-stage fits of 10 at 64."""
    args = polymnist_protocol.build_parser().parse_args(["--out", str(tmp_path)])
    assert args.runs == ["laplace_private", "ebm_private", "two_stage_private"]
    commands = polymnist_protocol.run_commands(args)
    assert list(commands) == list(polymnist_protocol.RUNS)  # every run --runs may name has a command
    laplace, two_stage = commands["laplace_private"], commands["two_stage_private"]
    option = lambda command, name: command[command.index(name) + 1]  # noqa: E731
    assert (option(laplace, "--batch-size"), option(laplace, "--epochs"), option(laplace, "--eval-size")) == ("32", "12", "2000")
    assert (option(two_stage, "--batch-size"), option(two_stage, "--two-stage-epochs")) == ("64", "10")
    with pytest.raises(SystemExit):
        polymnist_protocol.build_parser().parse_args(["--runs", "laplace_privat"])
    assert "invalid choice: 'laplace_privat'" in capsys.readouterr().err


def test_gap_figure_plots_the_training_gap_of_ml_and_generations_gap_of_nce(tmp_path, monkeypatch):
    runs = {"ml": [{"epoch": 0, "energy_gap": 0.3}, {"epoch": 1, "energy_gap": 0.2}],
            "nce": [{"epoch": 0}, {"epoch": 1, "generation_gap": 2.5}], "laplace": [{"epoch": 0, "loss": 1.0}]}
    for name, history in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(history))
    plotted = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes, "plot", lambda ax, x, y, **kw: plotted.append((kw["label"], x, y)) or real(ax, x, y, **kw)
    )
    path = polymnist_protocol.plot_energy_gaps({name: tmp_path / name for name in runs}, tmp_path / "gap.png")
    assert path.is_file()
    assert plotted == [("ml", (1, 2), (0.3, 0.2)), ("nce (generation's chains)", (2,), (2.5,))]
    assert polymnist_protocol.plot_energy_gaps({"laplace": tmp_path / "laplace"}, tmp_path / "none.png") is None


def test_report_reads_every_finished_run_into_one_table(tmp_path):
    """Per run: coherences, the fraction of the Laplace-to-ceiling gap closed, epochs and steps, the
    energy gap at generation and the tails' excess slope of an EBM; an unfinished run is left out."""

    def results(joint: float, ceiling: float, **extra) -> dict:
        return {
            "joint_coherence": joint, "aggregate_posterior_coherence": ceiling, "test_loss": 1.0,
            "cross_coherence": {"mean": 0.7, "mean_by_size": {"1": 0.6}}, "train_seconds": 60.0,
            "history": [{"epoch": 0, "seconds": 30.0, "steps": 10}, {"epoch": 1, "seconds": 30.0, "steps": 10}],
            **extra,
        }

    finished_runs = {
        "laplace_private": results(0.3, 0.5),
        "ebm_private": results(0.4, 0.5, energy_overlap={"gap": 2.5},
                               tail_growth={"excess_slope": 0.45, "normalisable": False}),
    }
    for name, result in finished_runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result))
    (tmp_path / "two_stage_private").mkdir()  # started, not finished
    commands = {name: [sys.executable, "examples/polymnist.py", "--out", name] for name in polymnist_protocol.RUNS}
    rows = {row["run"]: row for row in polymnist_protocol.report(commands, tmp_path)["rows"]}
    assert set(rows) == {"laplace_private", "ebm_private"}
    ebm = rows["ebm_private"]
    assert ebm["gap_closed"] == pytest.approx(0.5)  # (0.4 - 0.3) / (0.5 - 0.3)
    assert ebm["tail_excess"] == 0.45 and ebm["energy_gap_end"] == 2.5
    assert ebm["epochs"] == 2 and ebm["steps"] == 20 and ebm["epoch_s"] == 30.0
    assert rows["laplace_private"]["tail_excess"] is None
    table = (tmp_path / "protocol.md").read_text()
    assert "| tail_excess |" in table.splitlines()[0] and "`python examples/polymnist.py --out ebm_private`" in table
