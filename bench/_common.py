"""What every benchmark needs: the machine it ran on, resident memory, a timer, a progress bar."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import resource
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

PAGE = os.sysconf("SC_PAGE_SIZE")


def machine() -> str:
    """One line: CPU model, cores this process may use, memory, Python and the numeric libraries."""
    import numba
    import numpy as np

    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30
    return (f"{model}, {len(os.sched_getaffinity(0))} cores, {memory:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, numpy {np.__version__}, "
            f"numba {numba.__version__}")


def release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc), so resident memory reflects what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss_bytes() -> int:
    """Highest resident memory of this process so far (the kernel's high-water mark)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples resident memory every ``interval_s`` in a thread; ``peak`` is the highest seen."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@contextmanager
def peak_memory():
    """Yield a dict; on exit it holds ``before`` and ``peak`` resident bytes and ``extra`` = peak - before.

    Freed memory is handed back first: otherwise the heap left by earlier work hides new allocations.
    """
    gc.collect()
    release_free_memory()
    out = {"before": rss_bytes()}
    with RssSampler() as sampler:
        yield out
    out["peak"] = sampler.peak
    out["extra"] = sampler.peak - out["before"]


def wait_for(condition, timeout_s: float = 120.0, what: str = "the service") -> None:
    """Poll ``condition`` every 5 ms until it holds; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not get there within {timeout_s:g} s")
        time.sleep(0.005)


def best_of(fn, repeats: int = 3) -> float:
    """Shortest wall time of ``repeats`` calls of ``fn`` (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def progress(iterable=None, **kwargs):
    """A progress bar on stderr over a benchmark's main loop, when stderr is a terminal.

    ``progress(items)`` returns ``items`` themselves when stderr is piped or
    redirected, so that the benchmark runs and prints exactly as without a bar;
    ``progress(total=n)`` returns a bar to ``update()`` by hand (and ``close()``,
    or use it in ``with``), which shows nothing then. The bar is gone once done.
    Keyword arguments go to ``tqdm``.
    """
    bar = _Bar(iterable, **{"file": sys.stderr, "disable": None, "leave": False, "dynamic_ncols": True, **kwargs})
    return iterable if iterable is not None and bar.disable else bar


class _Bar(tqdm):
    """While it shows and stdout is a terminal too, lines printed to stdout go above the bar, not through it."""

    def __init__(self, *args, **kwargs):
        self._lines = None  # before tqdm's __init__: close() may run when that fails
        super().__init__(*args, **kwargs)
        if not self.disable and sys.stdout.isatty() and not isinstance(sys.stdout, _LinesAboveBars):
            self._lines = sys.stdout = _LinesAboveBars(sys.stdout)

    def close(self) -> None:
        lines, self._lines = self._lines, None
        if lines is not None:
            lines.flush_partial()
            if sys.stdout is lines:
                sys.stdout = lines.stream
        super().close()


class _LinesAboveBars:
    """Stands in for a terminal's stdout: writes whole lines above the progress bars on stderr."""

    def __init__(self, stream):
        self.stream = stream
        self._partial = ""

    def write(self, text: str) -> int:
        lines, newline, self._partial = (self._partial + text).rpartition("\n")
        if newline:
            with tqdm.external_write_mode(file=sys.stderr):  # clears the bars, then draws them again
                self.stream.write(lines + newline)
                self.stream.flush()
        return len(text)

    def flush_partial(self) -> None:
        """Write what has no newline yet (at the end; until then it waits for its line)."""
        if self._partial:
            self.stream.write(self._partial)
            self._partial = ""
        self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)
