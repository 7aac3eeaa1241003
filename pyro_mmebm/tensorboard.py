"""TensorBoard logging of training and evaluation (optional: ``pip install tensorboard``).

:func:`pyro_mmebm.fit` with ``tensorboard=DIR`` writes, from rank 0 only, at every step the loss per
example, the EBM's energy gap and the means of ``f_α`` on positives and negatives, each parameter
group's learning rate and the step time, and at every epoch the epoch's means; the experiment runner
adds the coherences and sample grids of each evaluation. View them with ``tensorboard --logdir DIR``.
``metrics.json`` is written as before: TensorBoard is a view, not the record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from torch import Tensor


class TensorBoardLog:
    """Scalars and images for TensorBoard, in ``log_dir``.

    :param log_dir: the folder of the event files.
    :param purge_step: on a resumed run, the first step to be written again: events a killed run wrote
        past its last checkpoint, from this step on, are hidden, so curves do not fold back.
    :raises ImportError: naming the package to install, when ``tensorboard`` is missing.
    """

    def __init__(self, log_dir: str | Path, purge_step: Optional[int] = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch imports tensorboard lazily, here
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: pip install tensorboard "
                '(or pip install -e ".[tensorboard]")'
            ) from error
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """One point per ``tag: value`` at ``step`` (tags group by their prefix: ``train/loss``)."""
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def images(self, tag: str, grid: Tensor, step: int) -> None:
        """An image ``(C, H, W)`` with values in ``[0, 1]`` (e.g. a grid of samples) at ``step``."""
        self._writer.add_image(tag, grid.clamp(0, 1), step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


__all__ = ["TensorBoardLog"]
