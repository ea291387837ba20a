"""Training progress for people: a tqdm bar on a terminal, plain lines in a log.

On a terminal the bar shows images/s and the ETA, and each epoch's summary is printed
above it. When the output is not a terminal (a file, a pipe, a CI log), there is no bar:
one line per epoch, and a line every ``interval`` seconds inside long epochs, each with
the loss, images/s, elapsed time and ETA, so a log reads top to bottom without ``\\r``.
"""

import os
import sys
import time
from typing import TextIO


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    s = int(round(max(seconds, 0.0)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _size(out: TextIO) -> os.terminal_size | None:
    """The size of the terminal ``out`` writes to, or None where there is no telling."""
    try:
        return os.get_terminal_size(out.fileno())
    except (AttributeError, OSError, ValueError):
        return None


class Progress:
    """Reports a run of ``total`` images (all remaining epochs) to ``out``.

    ``bar=None`` picks the bar exactly when ``out`` is a terminal; ``quiet`` turns both the
    bar and the in-epoch lines off (epoch summaries are still printed).
    """

    def __init__(
        self,
        total: int,
        epochs: int,
        out: TextIO | None = None,
        bar: bool | None = None,
        quiet: bool = False,
        interval: float = 60.0,
    ):
        self.out = out or sys.stdout
        self.total, self.epochs, self.interval, self.quiet = total, epochs, interval, quiet
        self.done = 0
        self.start = self.last_line = time.perf_counter()
        isatty = getattr(self.out, "isatty", lambda: False)
        self.bar = None
        if not quiet and (isatty() if bar is None else bar):
            from tqdm import tqdm

            # a terminal that reports a size of 0 (some `script` and container consoles) would
            # get an empty bar that follows its width, or none at all with 0 rows (tqdm hides
            # bars below the last row): 80 x 24 there
            size = _size(self.out)
            unknown = size is not None and 0 in size
            self.bar = tqdm(
                total=total,
                unit="img",
                unit_scale=True,
                file=self.out,
                dynamic_ncols=not unknown,
                ncols=(size.columns or 80) if size is not None and unknown else None,
                nrows=(size.lines or 24) if size is not None and unknown else None,
            )

    def _timing(self) -> tuple[float, float, float]:
        """(elapsed seconds, images per second, ETA seconds) over the whole run so far."""
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        return elapsed, rate, eta

    def _eta(self, eta: float) -> str:
        return clock(eta) if eta == eta else "?"

    def step(self, epoch: int, images: int, step: int, steps: int, loss: float) -> None:
        """After a training step of ``images`` images: step ``step`` (0-based) of ``steps``."""
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
            if step % 20 == 0:
                self.bar.set_postfix_str(
                    f"epoch {epoch + 1}/{self.epochs} loss {loss:.5f}", refresh=False
                )
            return
        now = time.perf_counter()
        if self.quiet or now - self.last_line < self.interval or step + 1 == steps:
            return
        self.last_line = now
        elapsed, rate, eta = self._timing()
        self._print(
            f"epoch {epoch + 1}/{self.epochs}: {100 * (step + 1) // steps}% of the epoch, "
            f"loss {loss:.5f}, {rate:.0f} images/s, elapsed {clock(elapsed)}, "
            f"ETA {self._eta(eta)}"
        )

    def epoch_end(self, summary: str) -> None:
        """Print an epoch's summary with the elapsed time and the ETA of the run."""
        elapsed, _, eta = self._timing()
        self.last_line = time.perf_counter()
        self._print(f"{summary}, elapsed {clock(elapsed)}, ETA {self._eta(eta)}")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
