"""umap-hdbscan in a worker process beside pca-gmm: the same documents as one after the other, and a dead
worker costs one refit's parallelism, never its answer."""

from __future__ import annotations

import numpy as np
import pytest
from edx_adapters.synthetic import make_phantom
from edx_protocol import Start

from edx_live.config import load_settings
from edx_live.core.snapshot import Snapshot
from edx_live.pipeline.refit import Analyzer
from edx_live.pipeline.workers import AUTO_MIN_PIXELS, parallel_wanted, usable_cores

from conftest import until

#: Fields that hold the clock, not the answer.
CLOCK = {"refit_s", "quantify_s"}


@pytest.fixture(scope="module")
def doses():
    """Three refits of one acquisition (more counts each time) on a phantom with a gradient and vacuum."""
    phantom = make_phantom((96, 96), channels=512, scale_kev=0.04, seed=7)
    rng = np.random.default_rng(5)
    cube = np.zeros((96, 96, 512), dtype=np.uint32)
    out = []
    for dose in (60.0, 60.0, 120.0):
        cube = cube + rng.poisson(phantom.expected(dose)).astype(np.uint32)
        out.append(cube.reshape(48, 2, 48, 2, -1).sum(axis=(1, 3), dtype=np.uint32))
    return phantom, out


def _snapshots(phantom, cubes, acquisition_id):
    start = Start(acquisition_id=acquisition_id, seq=0, **phantom.start_fields())
    ax = phantom.energy_axis
    return [Snapshot(start, c, 2, ax.offset_kev, ax.scale_kev, frames=i + 1, counts=int(c.sum()), refit=i,
                     final=i == len(cubes) - 1) for i, c in enumerate(cubes)]


def _plain(header) -> dict:
    return {k: v for k, v in header.model_dump().items() if k not in CLOCK}


def _run(analyzer, snapshots) -> list[list]:
    return [list(analyzer(s)) for s in snapshots]


def _assert_same(refits_a, refits_b):
    for docs_a, docs_b in zip(refits_a, refits_b, strict=True):
        assert [h.kind for h, _ in docs_a] == [h.kind for h, _ in docs_b]
        for (ha, aa), (hb, ab) in zip(docs_a, docs_b):
            assert _plain(ha) == _plain(hb), ha.kind
            assert aa.keys() == ab.keys()
            for key in aa:
                np.testing.assert_array_equal(aa[key], ab[key], err_msg=f"{ha.kind} {key}")


def test_auto_wants_a_worker_only_where_it_pays():
    both = ["pca-gmm", "umap-hdbscan"]
    assert parallel_wanted("auto", both, pixels=AUTO_MIN_PIXELS, cores=2)
    assert not parallel_wanted("auto", both, pixels=AUTO_MIN_PIXELS - 1, cores=2)
    assert not parallel_wanted("auto", both, pixels=10**6, cores=1)
    assert not parallel_wanted("auto", ["umap-hdbscan"], pixels=10**6, cores=8)
    assert parallel_wanted("on", both, pixels=16, cores=1)
    assert not parallel_wanted("off", both, pixels=10**6, cores=8)

    # An acquisition's start asks the analyzer to prepare: a small scan starts no worker, a large one does.
    analyzer = Analyzer(load_settings())
    try:
        assert analyzer.prepare(AUTO_MIN_PIXELS - 1) is None and analyzer.pool is None
        if usable_cores() >= 2:
            assert analyzer.prepare(AUTO_MIN_PIXELS) is analyzer.pool is not None
    finally:
        analyzer.close()
    assert analyzer.pool is None


def test_worker_gives_the_documents_of_a_serial_refit_and_survives_being_killed(doses):
    phantom, cubes = doses
    serial = Analyzer(load_settings(overrides={"refit": {"parallel": "off"}}))
    assert serial.pool is None
    expected = _run(serial, _snapshots(phantom, cubes, "acq"))
    assert {h.kind for docs in expected for h, _ in docs} >= {"clusters", "composition"}

    analyzer = Analyzer(load_settings(overrides={"refit": {"parallel": "on"}}))
    try:
        pool = analyzer.pool
        assert pool is not None
        until(lambda: pool.ready, timeout_s=600, what="the worker's warm-up")
        worker = pool._ready.result()
        got = _run(analyzer, _snapshots(phantom, cubes, "acq"))
        _assert_same(expected, got)
        assert pool.lost == 0
        # Ids that change between refits came out the same way through the worker.
        ids = [[c.label for c in h.clusters] for docs in got for h, _ in docs if h.kind == "clusters"]
        assert len(ids) == 6

        # The worker dies (the kernel's OOM killer, an operator): the refit segments in its own thread.
        import os
        import signal

        os.kill(worker, signal.SIGKILL)
        until(lambda: not _alive(worker), timeout_s=30, what="the worker to die")
        again = _run(analyzer, _snapshots(phantom, cubes, "acq2"))
        _assert_same(_run(serial, _snapshots(phantom, cubes, "acq2")), again)
        assert pool.lost == 1 and pool._executor is not None  # a new worker is on its way
    finally:
        analyzer.close()
    assert analyzer.pool is None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_the_worker_ends_with_a_killed_service(tmp_path):
    """A service killed with SIGKILL cannot stop its worker: the worker notices and ends by itself."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "serve.py"
    script.write_text(
        "import sys, time\n"
        "from edx_live.pipeline.workers import WorkflowPool\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkflowPool()\n"
        "    while not pool._executor._processes:\n"
        "        time.sleep(0.05)\n"
        "    print(*pool._executor._processes, flush=True)\n"
        "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(proc.stdout.readline().split()[0])
        assert _alive(worker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        until(lambda: not _alive(worker), timeout_s=60, what="the orphaned worker to end")
    finally:
        proc.kill()
