"""Many inputs of ``edx-live process`` as Dask tasks on a real local cluster on loopback.

One run of the command over the bundled file, a copy of it, a recording of it and three bad inputs
(a truncated file, a recording that is not one, a path that does not exist) is checked against
the same inputs processed one at a time; then a re-run skips what is done and redoes a
half-written folder, and the index is checked against the session folders' composition files.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from edx_live.cli import main
from edx_live.config import load_settings
from edx_live.scale.batch import Input, Options, expand_inputs, folder_names, plan, process_many
from edx_live.scale.cluster import ClusterOptions, dask_client
from edx_live.scale.index import CSV_COLUMNS
from edx_live.shell.demo import bundled_dataset
from edx_live.shell.offline import process_file, process_recording

FRAMES = 2
WORKFLOWS = ["pca-gmm"]
#: Fields that depend on the clock, the machine's load or where the files are.
VARYING = {"timings", "source", "segment_s", "quantify_s", "acquisition_id", "elapsed_s", "seconds", "files",
           "edx_live_version"}


def _settings():
    return load_settings(None, {"refit": {"workflows": WORKFLOWS}})


def _record(path: Path, folder: Path) -> Path:
    """A recording of ``path`` as ``serve --record`` writes it: every message received, no refit markers."""
    from edx_adapters.replay import open_replay
    from edx_protocol import encode

    from edx_live.core.ingest import Ingest
    from edx_live.shell.record import Recorder

    replay = open_replay(path, frames=FRAMES, acquisition_id="recorded-batch")
    ingest, recorder = Ingest(), Recorder(folder)
    for frames in [encode(replay.start)] + [encode(h, a) for h, a in replay.messages()]:
        recorder.message(frames, ingest.receive(frames))
    recorder.close()
    (made,) = recorder.files
    return made


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    bundled = bundled_dataset()
    copy = folder / "copy" / "core_shell.hspy"  # the same stem as the bundled file: names get a hash
    copy.parent.mkdir()
    shutil.copy(bundled, copy)
    truncated = folder / "truncated.hspy"
    truncated.write_bytes(bundled.read_bytes()[:5000])
    garbage = folder / "garbage.edxrec"
    garbage.write_bytes(b"not a recording\n" * 100)
    recording = _record(bundled, folder / "recordings")
    return {"bundled": str(bundled), "copy": str(copy), "recording": str(recording), "truncated": str(truncated),
            "garbage": str(garbage), "missing": str(folder / "missing.hspy")}


@pytest.fixture(scope="module")
def run(inputs, tmp_path_factory):
    """The command over every input on a local cluster of 2 workers."""
    root = tmp_path_factory.mktemp("batch") / "out"
    folder = Path(inputs["copy"]).parent.parent
    argv = ["process", inputs["bundled"], str(folder / "copy" / "*.hspy"), inputs["recording"],
            str(folder / "*.edxrec"), inputs["truncated"], inputs["missing"],
            "--out", str(root), "--frames", str(FRAMES), "--workers", "2", "--workflow", *WORKFLOWS]
    code = main(argv)
    index = json.loads((root / "index.json").read_text())
    return {"root": root, "code": code, "index": index, "by_input": {e["input"]: e for e in index["inputs"]}}


def _same(a, b, where=""):
    """Equal apart from :data:`VARYING` keys; floats to 1e-9 relative (the kernels' thread count differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - VARYING
        for key in keys:
            assert key in a and key in b, f"{where}.{key} missing on one side"
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (a != a and b != b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_every_input_is_listed_with_its_status_and_the_exit_code_says_one_failed(run, inputs):
    assert run["code"] == 1
    status = {name: run["by_input"][str(Path(path).absolute())]["status"] for name, path in inputs.items()}
    assert status == {"bundled": "done", "copy": "done", "recording": "done", "truncated": "failed",
                      "garbage": "failed", "missing": "failed"}
    for name in ("truncated", "garbage", "missing"):
        entry = run["by_input"][inputs[name]]
        assert entry["error"] and entry["phases"] == []
        assert entry["session"] is None or not (run["root"] / entry["session"]).exists()
    assert "RecordingError" in run["by_input"][inputs["garbage"]]["error"] or \
        "recording" in run["by_input"][inputs["garbage"]]["error"].lower()
    assert "does not exist" in run["by_input"][inputs["missing"]]["error"]
    sessions = {run["by_input"][inputs[n]]["session"] for n in ("bundled", "copy")}
    assert len(sessions) == 2 and all(s.startswith("core_shell-") for s in sessions)
    assert not [p for p in run["root"].iterdir() if p.name.startswith(".")]  # no partial folder left


@pytest.mark.parametrize("name", ["bundled", "copy", "recording"])
def test_each_session_equals_the_input_processed_alone(run, inputs, name, tmp_path):
    path = inputs[name]
    if name == "recording":
        alone = process_recording(path, tmp_path / "alone", _settings())
    else:
        alone = process_file(path, tmp_path / "alone", _settings(), frames=FRAMES, progress=False)
    folder = run["root"] / run["by_input"][path]["session"]
    batch = json.loads((folder / "summary.json").read_text())
    assert Path(batch["source"]) == Path(path)
    _same(batch, alone, "summary")
    for workflow in WORKFLOWS:
        _same(json.loads((folder / f"composition_{workflow}.json").read_text()),
              json.loads((tmp_path / "alone" / f"composition_{workflow}.json").read_text()), workflow)
    assert (folder / "report.png").is_file() and (folder / "input.json").is_file()


def test_the_index_holds_what_the_composition_files_hold(run, inputs):
    rows = list(csv.DictReader((run["root"] / "index.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    checked = 0
    for name in ("bundled", "copy", "recording"):
        entry = run["by_input"][inputs[name]]
        folder = run["root"] / entry["session"]
        summary = json.loads((folder / "summary.json").read_text())
        for workflow in WORKFLOWS:
            document = json.loads((folder / f"composition_{workflow}.json").read_text())
            phases = [p for p in entry["phases"] if p["workflow"] == workflow]
            assert [p["cluster"] for p in phases] == [c["label"] for c in document["clusters"]]
            total = 32 * 32  # 64 x 64 scan, 2 x 2 binning
            assert sum(c["pixels"] for c in summary["workflows"][workflow]["clusters"]) + \
                summary["workflows"][workflow]["noise_pixels"] == total
            for phase, cluster in zip(phases, document["clusters"]):
                assert phase["pixel_fraction"] == cluster["pixels"] / total
                for element, values in cluster["elements"].items():
                    mine = phase["elements"][element]
                    assert mine["atomic_percent"] == values["atomic_percent"]
                    assert mine["atomic_percent_sigma"] == values["atomic_percent_sigma"]
                    row = [r for r in rows if r["input"] == inputs[name] and r["workflow"] == workflow
                           and r["cluster"] == str(cluster["label"]) and r["element"] == element]
                    assert len(row) == 1
                    if values["atomic_percent"] is None:
                        assert row[0]["atomic_percent"] == ""
                    else:
                        assert float(row[0]["atomic_percent"]) == values["atomic_percent"]
                        assert float(row[0]["atomic_percent_sigma"]) == values["atomic_percent_sigma"]
                    checked += 1
    assert checked >= 6
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 3 and all(r["error"] and not r["workflow"] for r in failed)


def test_a_rerun_skips_what_is_done_and_redoes_a_half_written_folder(run, inputs, capsys):
    root, settings = run["root"], _settings()
    done = [inputs["bundled"], inputs["copy"], inputs["recording"]]
    summaries = {p: root / run["by_input"][p]["session"] / "summary.json" for p in done}
    before = {p: s.stat().st_mtime_ns for p, s in summaries.items()}
    options = Options(frames=FRAMES)
    seen = []
    results = process_many(done, root, settings, options, on_result=seen.append)  # nothing to run: no cluster
    assert [r["status"] for r in results] == ["skipped"] * 3 and len(seen) == 3
    assert {p: s.stat().st_mtime_ns for p, s in summaries.items()} == before
    index = json.loads((root / "index.json").read_text())
    assert [e["status"] for e in index["inputs"]] == ["skipped"] * 3 and all(e["phases"] for e in index["inputs"])

    summaries[inputs["copy"]].unlink()  # a folder a killed run left behind
    assert [p.action for p in plan([Input(p) for p in done], root, settings, options)] == ["skip", "run", "skip"]
    changed = Options(frames=FRAMES + 1)  # other options: not done
    assert {p.action for p in plan([Input(p) for p in done], root, settings, changed)} == {"run"}
    with dask_client(ClusterOptions(workers=1, dashboard=":0")) as client:
        results = process_many(done, root, settings, options, client=client)
        _loopback_only(client)
    assert [r["status"] for r in results] == ["skipped", "done", "skipped"]
    assert summaries[inputs["copy"]].is_file()
    assert {p: summaries[p].stat().st_mtime_ns for p in (inputs["bundled"], inputs["recording"])} == \
        {p: before[p] for p in (inputs["bundled"], inputs["recording"])}


def _loopback_only(client):
    assert client.scheduler.address.startswith("tcp://127.0.0.1:")
    info = client.scheduler_info()
    assert info["workers"] and all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])
    assert "dashboard" in info["services"] and client.dashboard_link.startswith("http://127.0.0.1:")


def test_the_local_cluster_listens_on_loopback_has_no_dashboard_and_leaves_the_environment_alone():
    """The scheduler's own HTTP server (health, metrics) stays up, on loopback; the dashboard's pages are not there."""
    import urllib.error
    import urllib.request

    import os

    before = dict(os.environ)
    with dask_client(ClusterOptions(workers=1)) as client:
        # distributed's nanny writes its workers' variables (NUMBA_NUM_THREADS, OMP_NUM_THREADS...) into
        # this process's environment; numba here would then refuse to compile anything.
        assert dict(os.environ) == before
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        http = client.cluster.scheduler.http_server
        assert http.address == "127.0.0.1"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{http.port}/status", timeout=10)
        assert missing.value.code == 404
        with urllib.request.urlopen(f"http://127.0.0.1:{http.port}/health", timeout=10) as ok:
            assert ok.status == 200
    assert dict(os.environ) == before


def test_equal_stems_get_names_from_their_own_paths():
    names = folder_names(["/a/x.hspy", "/b/x.hspy", "/c/y.edxrec", "/d/X.bcf"])
    assert names["/c/y.edxrec"] == "y"
    assert len({names["/a/x.hspy"], names["/b/x.hspy"], names["/d/X.bcf"]}) == 3
    assert folder_names(["/b/x.hspy", "/a/x.hspy"])["/a/x.hspy"] == names["/a/x.hspy"]


def test_globs_expand_recursively_and_a_glob_matching_nothing_is_an_error(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("d/a.hspy", "d/e/b.edxrec", "d/e/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_inputs([str(tmp_path / "**" / "*"), str(tmp_path / "d" / "a.hspy"), str(tmp_path / "*.emd")])
    assert [Path(i.path).name for i in found[:2]] == ["a.hspy", "b.edxrec"] and found[0].error is None
    assert len(found) == 3 and found[2].error and "matches" in found[2].error


def test_tls_files_need_a_tls_scheduler(tmp_path):
    from edx_live.scale.cluster import security

    pem = tmp_path / "c.pem"
    pem.write_text("x")
    with pytest.raises(ValueError, match="tls_ca_file"):
        security(ClusterOptions(scheduler="tls://127.0.0.1:1", tls_cert=pem))
    with pytest.raises(ValueError, match="not a readable file"):
        security(ClusterOptions(scheduler="tls://127.0.0.1:1", tls_ca_file=tmp_path / "none.pem", tls_cert=pem))
    sec = security(ClusterOptions(scheduler="tls://127.0.0.1:1", tls_ca_file=pem, tls_cert=pem))
    assert sec.require_encryption and sec.tls_ca_file == str(pem)
    with pytest.raises(Exception, match="scheduler"):
        load_settings(None, {"scale": {"tls_cert": str(pem)}})


@pytest.mark.slow
def test_both_workflows_run_in_a_worker_process(tmp_path):
    """umap-hdbscan's parallel numba kernels (NUMBA_THREADING_LAYER) and the logs, in Dask's worker process."""
    settings = load_settings(None, {"log_format": "json"})
    with dask_client(ClusterOptions(workers=1)) as client:
        (r,) = process_many([str(bundled_dataset())], tmp_path, settings, Options(frames=FRAMES), client=client)
        layer = client.run(lambda: __import__("os").environ.get("NUMBA_THREADING_LAYER"))
    assert r["status"] == "done", r["error"]
    assert set(layer.values()) == {"threadsafe"}
    summary = json.loads((tmp_path / r["session"] / "summary.json").read_text())
    assert set(summary["workflows"]) == {"pca-gmm", "umap-hdbscan"}
    assert all(summary["workflows"][w]["clusters"] for w in summary["workflows"])
