"""The energy gap ``E_q[f] − E_{p_α}[f]`` per epoch of several EBM runs in one figure, e.g. two
recipes of the same protocol:

    python bench/energy_gap_figure.py --out bench/results/energy_gap_recipes.png \\
        today=bench/results/polymnist_protocol_private_12/ebm_private \\
        no_penalty_encoder_gradient_0=bench/results/polymnist_protocol_private_8e/ebm_private
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polymnist_protocol import plot_energy_gaps


def labelled_run(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not Path(folder).is_dir():
        raise argparse.ArgumentTypeError(f"expected LABEL=RUN_FOLDER with an existing folder, got {text!r}")
    return label, Path(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=labelled_run, help="LABEL=RUN_FOLDER (metrics.json inside)")
    parser.add_argument("--out", type=Path, required=True, help="the figure (.png)")
    args = parser.parse_args()
    if plot_energy_gaps(dict(args.runs), args.out) is None:
        raise SystemExit("none of the runs has an energy gap in its metrics")
    print(args.out)


if __name__ == "__main__":
    main()
