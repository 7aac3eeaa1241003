"""Data-parallel scaling: training steps per second with 1, 2, ... processes (``torchrun``).

    python bench/distributed_scaling.py --processes 1 2                  # CPU: one thread per process
    python bench/distributed_scaling.py --processes 1 2 4 8 --device cuda # one GPU per process

Each setting launches ``torch.distributed.run`` with that many processes, each training PolyMNIST's
networks (five modalities, MoPoE's conv stacks, latent 32) with :func:`pyro_mmebm.fit` on its own
batches of ``--batch-size`` (random images held in memory: this measures the step, not the data)
for two epochs of ``--steps`` steps; the second is timed. It prints, per number of processes, steps
per second, examples per second over all processes, and the speed-up and efficiency against one
process, and writes them as JSON to ``--out``. On CPU every process gets one thread
(``OMP_NUM_THREADS=1``): on a machine with ``C`` cores, more than ``C`` processes cannot scale.

The column "independent" is what the machine itself allows: the same number of single-process
trainings run side by side, without any communication, examples per second summed. DDP cannot beat
it; the gap between the two is the cost of data parallelism (gradient all-reduce, reduced metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pyro_mmebm import TrainConfig, fit
from pyro_mmebm.data import InMemoryBatches, PolyMNIST
from pyro_mmebm.distributed import process_group_from_environment
from pyro_mmebm.experiment import ExperimentConfig, build_model_and_guide, build_objective
from pyro_mmebm.settings import from_flat


def worker(args: argparse.Namespace) -> None:
    """One process of a launched setting: train, and (rank 0) write the timed epoch as JSON."""
    with process_group_from_environment(args.device) as (group, device):
        device = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        experiment = from_flat(ExperimentConfig, dict(
            dataset="polymnist", out="", data_root="", prior=args.prior, latent_dim=32, seed=args.seed,
            langevin_steps=args.langevin_steps,
        ))
        examples = args.steps * args.batch_size * group.world_size
        generator = torch.Generator().manual_seed(args.seed)
        images = {
            name: torch.randint(0, 256, (examples, 3, 28, 28), dtype=torch.uint8, generator=generator)
            for name in PolyMNIST.modalities
        }
        loader = InMemoryBatches(images, None, args.batch_size).to(device)
        model, guide = build_model_and_guide(experiment, train_set=None)
        history = fit(
            model, guide, loader, TrainConfig(epochs=2, seed=args.seed), elbo=build_objective(experiment),
            device=device, progress=False,
        )
        if group.is_main:
            timed = history[1]
            Path(args.result).write_text(json.dumps({
                "processes": group.world_size, "steps": timed["steps"], "seconds": timed["seconds"],
                "steps_per_second": timed["steps"] / timed["seconds"],
                "examples_per_second": timed["steps"] * args.batch_size * group.world_size / timed["seconds"],
            }))


def _worker_arguments(args: argparse.Namespace, result: Path) -> list[str]:
    return [
        __file__, "--worker", "--result", str(result), "--device", args.device, "--prior", args.prior,
        "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--seed", str(args.seed),
        "--langevin-steps", str(args.langevin_steps),
    ]


def _environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def launch(processes: int, args: argparse.Namespace) -> dict:
    """One data-parallel run of ``processes`` processes: its timed epoch."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        subprocess.run(command + _worker_arguments(args, result), env=_environment(), check=True)
        return json.loads(result.read_text())


def independent_examples_per_second(processes: int, args: argparse.Namespace) -> float:
    """``processes`` single-process trainings side by side (no communication): examples per second summed."""
    with tempfile.TemporaryDirectory() as folder:
        results = [Path(folder) / f"result{i}.json" for i in range(processes)]
        environment = {k: v for k, v in _environment().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        if args.device == "cuda":
            runs = [subprocess.Popen([sys.executable, *_worker_arguments(args, result)],
                                     env=dict(environment, CUDA_VISIBLE_DEVICES=str(i))) for i, result in enumerate(results)]
        else:
            runs = [subprocess.Popen([sys.executable, *_worker_arguments(args, result)], env=environment) for result in results]
        if any(run.wait() != 0 for run in runs):
            raise RuntimeError("an independent training run failed")
        return sum(json.loads(result.read_text())["examples_per_second"] for result in results)


def main(args: argparse.Namespace) -> None:
    rows = []
    for n in args.processes:
        row = launch(n, args)
        row["independent_examples_per_second"] = independent_examples_per_second(n, args)
        rows.append(row)
    base = rows[0]["examples_per_second"] / rows[0]["processes"]
    print(f"prior {args.prior}, batch {args.batch_size} per process, device {args.device}, {os.cpu_count()} cores")
    print("| processes | steps/s | examples/s | speed-up | efficiency | independent examples/s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        row["speed_up"] = row["examples_per_second"] / rows[0]["examples_per_second"]
        row["efficiency"] = row["examples_per_second"] / (base * row["processes"])
        print(f"| {row['processes']} | {row['steps_per_second']:.2f} | {row['examples_per_second']:.1f} | "
              f"{row['speed_up']:.2f}x | {100 * row['efficiency']:.0f} % | "
              f"{row['independent_examples_per_second']:.1f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "result", "out")}
        Path(args.out).write_text(json.dumps({"settings": settings, "cpu_count": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    parser.add_argument("--prior", default="ebm")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--langevin-steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/distributed_scaling/cpu.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    worker(arguments) if arguments.worker else main(arguments)
