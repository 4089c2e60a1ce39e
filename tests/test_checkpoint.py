"""Checkpoints restore a record exactly, refuse what they do not list, and are written whole or not at all."""

from __future__ import annotations

import stat
from collections import Counter

import msgpack
import numpy as np
import pytest

from edx_live.pipeline import checkpoint
from edx_live.pipeline.state import AcquisitionRecord
from edx_live.segment.result import SegmentationResult
from edx_live.segment.tracking import ConvergenceTracker
from edx_live.shell.recover import Checkpoints, checkpoint_path, load, plan


def _record() -> AcquisitionRecord:
    rng = np.random.default_rng(0)
    result = SegmentationResult(workflow="pca-gmm", labels=rng.integers(-1, 3, (8, 9)).astype(np.int32),
                                spectra=rng.random((3, 16)), pixels=np.array([20, 30, 22]),
                                confidence=rng.random((8, 9)).astype(np.float32),
                                choices={"n_components": np.int64(4), "bic": [1.5, float("nan")]},
                                warm_start={"embedding": rng.random((72, 2))})
    tracker = ConvergenceTracker(patience=3)
    tracker.stable_refits = 2
    record = AcquisitionRecord("acq-1", refits=3, frames_at_refit=5, counts_at_refit=1234, recording="x.edxrec",
                               setup={"counts": 1e6}, convergence={"pca-gmm": tracker}, final_done=False)
    record.outputs = {"pca-gmm": result}
    return record


def test_a_record_comes_back_equal_array_for_array():
    record = _record()
    back = checkpoint.loads(checkpoint.dumps({"record": record, "published": Counter({("clusters", "pca-gmm"): 4})}))
    restored = back["record"]
    assert back["published"] == Counter({("clusters", "pca-gmm"): 4})
    assert (restored.refits, restored.counts_at_refit, restored.recording) == (3, 1234, "x.edxrec")
    r, o = restored.outputs["pca-gmm"], record.outputs["pca-gmm"]
    for name in ("labels", "spectra", "pixels", "confidence"):
        a, b = getattr(r, name), getattr(o, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    assert r.choices["n_components"] == 4 and type(r.choices["n_components"]) is np.int64
    assert np.isnan(r.choices["bic"][1]) and np.array_equal(r.warm_start["embedding"], o.warm_start["embedding"])
    assert restored.convergence["pca-gmm"].stable_refits == 2 and restored.convergence["pca-gmm"].patience == 3


def test_a_class_it_does_not_list_is_refused_both_ways():
    class Other:
        pass

    with pytest.raises(checkpoint.CheckpointError, match="cannot hold"):
        checkpoint.dumps({"x": Other()})
    forged = msgpack.packb({"format": checkpoint.FORMAT, "content": {"x": msgpack.ExtType(
        5, msgpack.packb(["os.system", {"command": "true"}]))}}, use_bin_type=True)
    with pytest.raises(checkpoint.CheckpointError, match="does not restore"):
        checkpoint.loads(forged)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.loads(b"not msgpack at all \xc1")


def test_checkpoints_are_private_atomic_and_removed_for_good(tmp_path):
    store = Checkpoints(fsync=True)
    record = _record()
    record.recording = str(tmp_path / "acq-1.edxrec")
    path = store.save(record)
    assert path == checkpoint_path(record.recording) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path)["record"].refits == 3
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(checkpoint.CheckpointError, match="CRC"):
        load(path)
    store.save(record)  # written whole again
    assert load(path)["record"].refits == 3
    store.remove(record.recording)
    assert not path.exists()
    assert store.save(record) is None and not path.exists()  # a save after the removal does not bring it back
    assert plan(tmp_path) == []  # nothing left to recover
