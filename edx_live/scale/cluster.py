"""A Dask client for a many-input run: a local cluster on loopback, or a running scheduler, with TLS if asked.

Safe by default: the local cluster's scheduler, workers and nannies listen on 127.0.0.1 only and it
has no dashboard unless one is named (which should stay on 127.0.0.1 too). A remote scheduler is
reached by its address (``tcp://`` or ``tls://``); with TLS files the client presents its certificate
and checks the scheduler's against the CA (``distributed.security.Security``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edx_live.logs import get_logger

log = get_logger("scale")

LOOPBACK = "127.0.0.1"
#: Variables that size the thread pools of numpy's BLAS and of numba in each local worker process.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class ClusterOptions:
    """Where the tasks run (the ``[scale]`` section, command line applied).

    Attributes
    ----------
    scheduler : str or None
        A running scheduler's address; None = a local cluster for the run.
    workers : int or None
        Local worker processes; None = the cores this process may use.
    threads_per_worker : int
    dashboard : str or None
        The local cluster's dashboard address; None = none.
    tls_ca_file, tls_cert, tls_key : Path or None
        TLS files of the client for a ``tls://`` scheduler.
    """

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    dashboard: str | None = None
    tls_ca_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def from_settings(cls, scale) -> "ClusterOptions":
        """From ``settings.scale`` (:class:`edx_live.config.ScaleSettings`)."""
        return cls(**scale.model_dump())


def cores() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def security(options: ClusterOptions):
    """A ``distributed.security.Security`` from the TLS files, or None without any.

    Raises ValueError naming a file that is missing or a certificate without its CA.
    """
    files = {"tls_ca_file": options.tls_ca_file, "tls_cert": options.tls_cert, "tls_key": options.tls_key}
    if not any(files.values()):
        return None
    for name, path in files.items():
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{name} {path} is not a readable file")
    if options.tls_ca_file is None or options.tls_cert is None:
        raise ValueError("TLS needs tls_ca_file (the CA that signed the scheduler's certificate) and tls_cert "
                         "(this client's certificate; its key in tls_key or inside it)")
    from distributed.security import Security

    return Security(tls_ca_file=str(options.tls_ca_file), tls_client_cert=str(options.tls_cert),
                    tls_client_key=str(options.tls_key) if options.tls_key else None, require_encryption=True)


def _dashboard(address: str | None) -> str | None:
    """The dashboard address; a bare port (``:8787``, ``8787``) is put on loopback rather than every interface."""
    if address is None:
        return None
    address = str(address)
    if address.startswith(":") or address.isdigit():
        return f"{LOOPBACK}:{address.lstrip(':')}"
    return address


def local_cluster(options: ClusterOptions):
    """A ``distributed.LocalCluster`` of worker processes on 127.0.0.1 (the caller closes it).

    Each worker's BLAS and numba pools get the cores divided among the tasks that run at once, so the
    workers do not oversubscribe the machine. Set before the worker processes start (the nanny's
    pre-spawn environment): numpy and numba read them at import.
    """
    import dask
    from distributed import LocalCluster

    workers = options.workers or cores()
    per_task = str(max(1, cores() // (workers * options.threads_per_worker)))
    environ = {f"distributed.nanny.pre-spawn-environ.{name}": per_task for name in THREAD_VARIABLES}
    with dask.config.set(environ), _own_environment():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=options.threads_per_worker, processes=True,
                               host=LOOPBACK, scheduler_port=0, dashboard_address=_dashboard(options.dashboard),
                               worker_dashboard_address=None)
    log.info("local_cluster", scheduler=cluster.scheduler_address, workers=workers,
             threads_per_worker=options.threads_per_worker, kernel_threads=int(per_task),
             dashboard=cluster.dashboard_link if options.dashboard else None)
    return cluster


@contextmanager
def _own_environment():
    """Keep this process's environment as it was: a nanny writes its workers' variables into it for good.

    numba reads ``NUMBA_NUM_THREADS`` again when it compiles, and refuses a value other than the
    one its threads started with: left changed, the next compilation in this process would fail.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


@contextmanager
def dask_client(options: ClusterOptions, timeout_s: float = 60.0):
    """A ``distributed.Client`` for the run; closes the client, and the local cluster if it made one.

    Parameters
    ----------
    options : ClusterOptions
        ``scheduler`` None: a local cluster (:func:`local_cluster`); else that scheduler, with
        :func:`security` when TLS files are given.
    timeout_s : float
        Seconds to wait for the scheduler to answer.
    """
    from distributed import Client

    if options.scheduler is None:
        if security(options) is not None:
            raise ValueError("TLS files are for a remote scheduler (--scheduler tls://HOST:PORT); the local "
                             "cluster listens on 127.0.0.1 only")
        cluster = local_cluster(options)
        try:
            with Client(cluster, timeout=timeout_s) as client:
                yield client
        finally:
            with _own_environment():  # a nanny restarting a worker while it closes writes it again
                cluster.close()
        return
    sec = security(options)
    if sec is not None and not options.scheduler.startswith("tls://"):
        raise ValueError(f"TLS files given but the scheduler address {options.scheduler} is not tls://")
    with Client(options.scheduler, security=sec, timeout=timeout_s) as client:
        log.info("scheduler", address=options.scheduler, tls=sec is not None,
                 workers=len(client.scheduler_info().get("workers", {})))
        yield client
