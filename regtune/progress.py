"""Progress for long loops: a tqdm bar on an interactive terminal, one plain line per interval in a log.

tqdm redraws its bar with carriage returns; written into a log file (``nohup``, CI, a Ray worker) that is one
unreadable line of dozens of frames. When stderr is not a terminal, :func:`progress` prints a plain line at most
every ``interval`` seconds instead, and nothing at all for a loop that ends sooner.
"""
from __future__ import annotations

import sys
import time
from typing import Any


class _LogProgress:
    """tqdm's ``update``/``close`` interface, writing ``desc: n/total unit (s)`` lines at most every ``interval`` s."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float, stream: Any) -> None:
        self.total, self.desc, self.unit, self.interval, self.stream = total, desc, unit, interval, stream
        self.n = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: {self.n}{of} {self.unit}s, {now - self.start:.0f} s", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def progress(enabled: bool, total: int | None, desc: str, unit: str, *, interval: float = 30.0,
             stream: Any = None) -> Any:
    """A progress object with ``update(n)`` and ``close()``, or None when ``enabled`` is false.

    On a terminal (``stream.isatty()``) it is a tqdm bar that clears itself when closed; elsewhere a
    :class:`_LogProgress` writing one line per ``interval`` seconds. ``stream`` defaults to ``sys.stderr``.
    """
    if not enabled:
        return None
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream)
    return _LogProgress(total, desc, unit, interval, stream)
