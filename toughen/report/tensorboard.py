"""Optional TensorBoard logging of each epoch's metrics, as an ``on_epoch`` callback of training.

    toughen train --tensorboard ...   ->   tensorboard --logdir RUN_DIR/tensorboard
"""

from __future__ import annotations

from pathlib import Path

from toughen.errors import ToughenUsageError


class TensorBoardLogger:
    """Writes every numeric field of a metrics row as a scalar at step = epoch.

    The package is checked for at construction, so a missing one fails before training starts;
    the writer itself is opened at the first epoch, so the run directory is still empty when
    training checks it.
    """

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        except ImportError:
            raise ToughenUsageError(
                "--tensorboard needs the tensorboard package, which is not installed: "
                "pip install tensorboard (or pip install 'toughen[tensorboard]'), or leave out --tensorboard"
            ) from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer = None

    def __call__(self, row: dict) -> None:
        if self.writer is None:
            self.writer = self._writer_class(str(self.log_dir))
        epoch = int(row.get("epoch", 0))
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()  # a run that is killed still leaves its epochs readable

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
