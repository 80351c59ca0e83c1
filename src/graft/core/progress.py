"""Progress of Graft's long steps, on stderr: what a user sees while a stage works.

On a terminal, one line redrawn in place: a bar, the count, the rate and the time left. Anywhere
else (a log file, `dvc repro` under CI, a Prefect worker), a plain line when the step starts,
every `GRAFT_PROGRESS_EVERY` seconds (default 10) and when it ends, so a log shows that work is
moving without flooding it. `GRAFT_PROGRESS=0` silences it.

    with Progress("features: embedding", total=len(paths), unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")
BAR_WIDTH = 24  # characters of the terminal bar
REDRAW_S = 0.1  # at most ten redraws a second on a terminal


def _every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("GRAFT_PROGRESS_EVERY", "10")))
    except ValueError:
        return 10.0


class Progress:
    """Progress of one step of `total` units (None: unknown); `update` after each piece of work,
    with optional `info` (e.g. loss=0.31) shown beside the count."""

    def __init__(self, label: str, total: int | None = None, unit: str = "it",
                 stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and os.environ.get("GRAFT_PROGRESS", "1") != "0"
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = REDRAW_S if self.tty else _every_s()
        self.done = 0
        self.info: dict[str, Any] = {}
        self.started = time.perf_counter()
        self._shown = -float("inf")  # when the last line was written
        self._closed = False

    def __enter__(self) -> Progress:
        if not self.tty:
            self._write(f"{self.label}: started" + (f", {self.total} {self.unit}"
                                                    if self.total else ""))
            self._shown = time.perf_counter()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(failed=exc_type is not None)

    def update(self, n: int = 1, **info: Any) -> None:
        self.done += n
        self.info.update(info)
        now = time.perf_counter()
        if now - self._shown >= self.every_s:
            self._shown = now
            self._write(self.line(now))

    def close(self, failed: bool = False) -> None:
        """The last line: the count, the total time and the rate (or that the step failed)."""
        if self._closed:
            return
        self._closed = True
        elapsed = time.perf_counter() - self.started
        if failed:
            text = f"{self.label}: stopped after {self.done} {self.unit} ({elapsed:.1f} s)"
        else:
            rate = f", {_rate(self.done / elapsed, self.unit)}" if elapsed > 0 and self.done \
                else ""
            text = f"{self.label}: {self.done} {self.unit} in {elapsed:.1f} s{rate}{self._info()}"
        self._write(text, final=True)

    def line(self, now: float) -> str:
        """The progress line: label, bar (terminal only), count, percent, rate, time left."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        parts = [f"{self.label}:"]
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            if self.tty:
                filled = round(fraction * BAR_WIDTH)
                parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
            parts.append(f"{count} {self.unit} ({100 * fraction:.0f}%)")
        else:
            parts.append(f"{count} {self.unit}")
        parts.append(_rate(rate, self.unit))
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        return " ".join(parts) + self._info()

    def _info(self) -> str:
        return "".join(f", {k} {_fmt(v)}" for k, v in self.info.items())

    def _write(self, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def say(line: str) -> None:
    """One line for the user on stderr (silenced, like Progress, by GRAFT_PROGRESS=0)."""
    if os.environ.get("GRAFT_PROGRESS", "1") != "0":
        # not print(): a Prefect flow with log_prints turns print into a log record, which the
        # quiet console drops
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def track(items: Iterable[T], label: str, total: int | None = None, unit: str = "it"
          ) -> Iterator[T]:
    """`items`, one at a time, with a Progress counting them."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, unit) as bar:
        for item in items:
            yield item
            bar.update()


def format_seconds(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _rate(per_s: float, unit: str) -> str:
    """'31.9 img/s', or '12.4 s/epoch' for steps slower than one a second."""
    if 0 < per_s < 1:
        return f"{1 / per_s:.1f} s/{unit}"
    return f"{per_s:.1f} {unit}/s"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
