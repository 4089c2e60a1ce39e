"""A worker process that segments beside the refit thread, so that the two workflows use two cores.

The refit thread fits pca-gmm (numpy and BLAS, which release the GIL) while umap-hdbscan
(UMAP's and pynndescent's numba code, HDBSCAN's Cython, which mostly hold it) runs in a process
of its own: neither workflow waits for the other's GIL, and neither holds back ingest's.

The binned cube goes to the worker through one block of shared memory, kept from one refit to
the next while its size holds; the result (labels, cluster spectra, choices, the embedding the
next refit starts from) comes back pickled, a few MB. The worker is started and warmed up (numba
compilation) as soon as the pool is made; a refit that comes before it is ready, or finds it
dead, segments in the refit thread as before. Results are the same either way: the same code
with the same seeds.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from edx_live.logs import configured, get_logger

log = get_logger("segment")


#: ``parallel = "auto"`` starts the worker once a refit has this many binned pixels (128 x 128): below,
#: a refit takes about a second and the worker's start (numba compiles UMAP again, a minute of CPU)
#: would cost more than it saves.
AUTO_MIN_PIXELS = 16384


def usable_cores() -> int:
    """Cores this process may run on (its affinity: a container's or ``taskset``'s limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def parallel_wanted(setting: str, workflows, pixels: int | None = None, cores: int | None = None) -> bool:
    """Whether ``[refit] parallel`` asks for a worker for a refit of ``pixels`` binned pixels.

    ``on``: whenever both workflows run; ``auto``: also needs two or more cores and, when
    ``pixels`` is given, at least :data:`AUTO_MIN_PIXELS`; ``off``: never. A daemonic process
    (a Dask worker, a pool's worker) may not start processes: never there.
    """
    import multiprocessing

    if setting == "off" or len(workflows) < 2 or multiprocessing.current_process().daemon:
        return False
    if setting == "on":
        return True
    cores = usable_cores() if cores is None else cores
    return cores >= 2 and (pixels is None or pixels >= AUTO_MIN_PIXELS)


def _warm(fmt: str, level: str, parent: int) -> None:
    """Worker start-up: structured logs as the parent's, then numba's compilation out of the first refit."""
    from edx_live.logs import configure

    configure(fmt, level)
    _exit_with_parent(parent)
    from edx_live.segment import warm_up

    warm_up()


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """End this worker once its parent is gone (killed with SIGKILL, it could not stop the worker itself)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="edx-live-parent-watch", daemon=True).start()


def _ready() -> int:
    return os.getpid()


def _segment(name: str, shape: tuple, dtype: str, estimator, workflow: str, offset_kev, scale_kev):
    """In the worker: segment the cube in shared memory ``name`` (never written to)."""
    from edx_live.segment import segment

    block = SharedMemory(name=name)
    try:
        cube = np.ndarray(shape, dtype=dtype, buffer=block.buf)
        cube.flags.writeable = False
        return segment(cube, estimator, workflow, offset_kev=offset_kev, scale_kev=scale_kev)
    finally:
        del cube
        block.close()


class WorkflowPool:
    """One worker process for the workflow that runs beside the refit thread.

    :meth:`submit` copies a cube into shared memory and starts its segmentation;
    :meth:`result` waits for it, and gives None when the worker could not do it (not
    warmed up yet when submitted, died, or failed to start), so that the caller segments
    in its own thread. One segmentation at a time: the refits of the service are serial.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._ready: Future | None = None
        self._block: SharedMemory | None = None
        self.lost = 0  # workers that died or failed to start
        self._start()

    def _start(self) -> None:
        try:
            self._executor = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_warm,
                                                 initargs=(configured["fmt"], configured["level"], os.getpid()))
            self._ready = self._executor.submit(_ready)
        except OSError as exc:  # no process could be made: refits stay in the thread
            log.warning("worker_not_started", error=str(exc))
            self._executor = self._ready = None

    @property
    def ready(self) -> bool:
        """The worker is up and warmed up (it has answered)."""
        return self._ready is not None and self._ready.done() and self._ready.exception() is None

    def submit(self, cube: np.ndarray, estimator, workflow: str, offset_kev, scale_kev) -> Future | None:
        """Start segmenting ``cube`` in the worker; None when it is not ready (the caller segments itself)."""
        with self._lock:
            if self._executor is None or self._ready is None or not self._ready.done():
                return None
            if self._ready.exception() is not None:
                self._restart(self._ready.exception())
                return None
            block = self._shared(cube.nbytes)
            np.ndarray(cube.shape, dtype=cube.dtype, buffer=block.buf)[...] = cube
            try:
                return self._executor.submit(_segment, block.name, cube.shape, cube.dtype.str, estimator, workflow,
                                             offset_kev, scale_kev)
            except (BrokenProcessPool, RuntimeError) as exc:
                self._restart(exc)
                return None

    def result(self, pending: Future | None):
        """The segmentation result of ``pending``; None when the worker died doing it.

        An exception raised by the segmentation itself (odd data) is raised here, as it
        would have been in the refit thread.
        """
        if pending is None:
            return None
        try:
            return pending.result()
        except BrokenProcessPool as exc:
            with self._lock:
                self._restart(exc)
            return None

    def _shared(self, nbytes: int) -> SharedMemory:
        """The shared block, made again only when a cube no longer fits or is much smaller."""
        if self._block is not None and (self._block.size < nbytes or self._block.size > 4 * max(nbytes, 1)):
            self._free()
        if self._block is None:
            self._block = SharedMemory(create=True, size=max(nbytes, 1))
        return self._block

    def _free(self) -> None:
        if self._block is not None:
            self._block.close()
            self._block.unlink()
            self._block = None

    def _restart(self, exc: BaseException) -> None:
        """A worker that died or failed to start is replaced; this refit segments in the thread."""
        self.lost += 1
        log.warning("worker_lost", error=repr(exc), lost=self.lost)
        self._shutdown()
        self._start()

    def _shutdown(self) -> None:
        executor, self._executor, self._ready = self._executor, None, None
        if executor is not None:
            processes = list((getattr(executor, "_processes", None) or {}).values())
            executor.shutdown(wait=False, cancel_futures=True)
            for process in processes:  # a segmentation running now would hold shutdown for its length
                if process.is_alive():
                    process.kill()

    def close(self) -> None:
        """Stop the worker (a running segmentation is abandoned) and free the shared block."""
        with self._lock:
            self._shutdown()
            self._free()
