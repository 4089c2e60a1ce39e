"""The web viewer: what it computes from documents, its subscription, and the page in a real browser.

The browser tests drive Debian's chromium headless through Playwright (no browser download):
the page is served by the real Bokeh server and fed through a real ZeroMQ PUB socket.
Screenshots are kept in ``test-artifacts/view/``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq
from edx_protocol import encode
from edx_protocol.examples import result_examples

from edx_live.colours import CLUSTER_COLOURS
from edx_live.core.rate import CountRate
from edx_live.view import model
from edx_live.view.feed import Feed

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "view"


def _examples():
    """The golden documents, the composition of the same workflow as the clusters."""
    ex = {e.name: e for e in result_examples()}
    comp = ex["composition"]
    ex["composition"] = comp._replace(header=comp.header.model_copy(
        update={"workflow": ex["clusters"].header.workflow}),
        topic=b"composition/" + ex["clusters"].header.workflow.encode())
    return ex


def _retitled(example, acquisition_id: str, seq: int | None = None, **fields):
    update = {"acquisition_id": acquisition_id, **fields}
    if seq is not None:
        update["seq"] = seq
    return example.header.model_copy(update=update), example.arrays, example.topic


def _send(pub: zmq.Socket, header, arrays, topic: bytes) -> None:
    pub.send_multipart([topic, *encode(header, arrays)])


def _wait(predicate, timeout_s: float = 20.0, step_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError("condition not met in time")


@pytest.fixture()
def pub():
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)


@contextmanager
def _publishing(sock, docs, period_s: float = 0.2):
    """A service that keeps publishing ``docs``, as the real one does (a status every interval), until the block ends."""
    alive = threading.Event()
    alive.set()

    def service():
        while alive.is_set():
            for d in docs:
                _send(sock, *d)
            time.sleep(period_s)

    thread = threading.Thread(target=service, daemon=True)
    thread.start()
    try:
        yield
    finally:
        alive.clear()
        thread.join()


def _publish_until(sock, docs, predicate, timeout_s: float = 20.0):
    """Publish ``docs`` again and again until ``predicate()`` holds (a SUB joins a PUB asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for header, arrays, topic in docs:
            _send(sock, header, arrays, topic)
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("the subscriber never saw the documents")


# ---------------------------------------------------------------------------------------------- model


def test_cluster_colours_follow_ids_not_positions():
    ex = _examples()["clusters"].header
    rows = model.legend(ex)
    assert rows["colour"][:2] == [CLUSTER_COLOURS[0], CLUSTER_COLOURS[1]]
    # the same id keeps its colour when an earlier cluster vanishes
    later = ex.model_copy(update={"clusters": ex.clusters[1:]})
    assert model.legend(later)["colour"][0] == CLUSTER_COLOURS[1]
    assert model.cluster_colour(model.NOISE_LABEL) == model.NOISE_COLOUR not in CLUSTER_COLOURS
    rgba = model.label_rgba(np.array([[0, 1], [model.NOISE_LABEL, 0]]))
    assert rgba[0, 0] == rgba[1, 1] != rgba[0, 1]
    assert rgba[1, 0] == np.uint32(0xFF000000)  # opaque black


def test_composition_rows_show_sigma_parts_limits_and_labels():
    ex = _examples()
    comp = ex["composition"].header
    elements, rows = model.composition_table(comp)
    assert elements == ["Fe", "Pt"]
    assert "52.5 ± 3.2" in rows["Fe"][0] and "counting 3.00, spread 1.25" in rows["Fe"][0]
    assert "n.d. (&lt; 3.50)" in rows["Fe"][2]
    assert rows["target"][0].startswith("σ ≤ 1: 24 sweeps, 12 s")
    legend = model.legend(ex["clusters"].header, comp)
    assert legend["label"][:2] == ["Fe52 Pt48", "Fe90 Pt10"]
    assert legend["cluster"][-1] == "noise"
    # a composition of another refit does not label this refit's clusters
    stale = comp.model_copy(update={"refit": comp.refit - 1})
    assert model.legend(ex["clusters"].header, stale)["label"][0] == "…"


def test_theoretical_kfactors_are_marked():
    comp = _examples()["composition"].header
    assert "THEORETICAL" not in model.kfactor_note(comp)
    assert "THEORETICAL" in model.kfactor_note(comp.model_copy(update={"kfactors_theoretical": True}))


def test_noise_has_no_confidence_and_count_rate_is_a_slope():
    labels = np.array([[0, model.NOISE_LABEL]])
    conf = model.confidence_map(labels, np.array([[0.7, 0.9]], np.float32))
    assert conf[0, 0] == np.float32(0.7) and np.isnan(conf[0, 1])
    rate = CountRate()
    rate.note(0.0, 100)
    assert rate.value is None
    rate.note(2.0, 500)
    assert rate.value == 200.0


# ---------------------------------------------------------------------------------------------- feed


def test_feed_keeps_the_newest_and_follows_a_new_acquisition(pub):
    sock, endpoint = pub
    ex = _examples()
    feed = Feed(endpoint).start()
    try:
        first = [_retitled(ex["status"], "acq-a"), _retitled(ex["clusters"], "acq-a"),
                 _retitled(ex["composition"], "acq-a")]
        _publish_until(sock, first, lambda: len(feed.snapshot().composition) == 1)
        s = feed.snapshot()
        assert s.acquisition_id == "acq-a" and set(s.clusters) == {"pca-gmm"}
        # a malformed document is counted and changes nothing
        sock.send_multipart([b"clusters/pca-gmm", b"\x00not msgpack"])
        _wait(lambda: feed.snapshot().malformed >= 1)
        assert feed.snapshot().clusters.keys() == {"pca-gmm"}
        # a newer refit replaces the older one
        newer = _retitled(ex["clusters"], "acq-a", seq=99)
        _publish_until(sock, [newer], lambda: feed.snapshot().clusters["pca-gmm"][0].seq == 99)
        # a new acquisition starts afresh: the old maps are not shown as its own
        _publish_until(sock, [_retitled(ex["status"], "acq-b")], lambda: feed.snapshot().acquisition_id == "acq-b")
        s = feed.snapshot()
        assert s.clusters == {} and s.composition == {}
    finally:
        feed.stop()


def test_view_command_needs_no_analysis_stack():
    """``edx-live view`` imports neither scikit-learn, HyperSpy, exspy nor the service's settings."""
    code = ("import sys, edx_live.cli as c, edx_live.view.server, edx_live.view.page; "
            "heavy = [m for m in ('sklearn', 'hyperspy', 'exspy', 'umap', 'hdbscan', 'numba', 'edx_live.config',"
            " 'edx_live.pipeline.refit') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------- browser


@pytest.fixture()
def viewer(pub):
    from edx_live.view.server import Viewer

    sock, endpoint = pub
    v = Viewer(endpoint, port=0).start()
    yield sock, v
    v.stop()


def test_page_shows_documents_and_says_when_no_service(viewer, browser_page, monkeypatch):
    from edx_live.view import page as page_module

    monkeypatch.setattr(page_module, "STALE_S", 2.0)
    sock, v = viewer
    ex = _examples()
    requested: list[str] = []
    browser_page.on("request", lambda request: requested.append(request.url))
    browser_page.goto(v.url)
    browser_page.wait_for_selector("text=No service reachable", timeout=20000)
    # everything the page loads (BokehJS included) comes from the viewer itself: it works with no internet
    assert requested and all(u.startswith(v.url) or u.startswith(v.url.replace("http", "ws")) for u in requested), \
        requested
    docs = [_retitled(ex["status"], "acq-a"), _retitled(ex["clusters"], "acq-a"),
            _retitled(ex["composition"], "acq-a")]
    with _publishing(sock, docs):
        browser_page.wait_for_selector("text=Service at", timeout=20000)
        browser_page.wait_for_selector("text=Fe52 Pt48", timeout=20000)   # legend label from the composition
        browser_page.wait_for_selector("text=n.d. (< 3.50)", timeout=20000)  # below detection, with its limit
        assert browser_page.locator("text=No service reachable").count() == 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser_page.screenshot(path=str(ARTIFACTS / "documents.png"), full_page=True)
    # nothing more comes: the page says so plainly
    browser_page.wait_for_selector("text=No service reachable", timeout=20000)


# ---------------------------------------------------------------------------------------------- live, real service


def _service(overrides: dict):
    """The demo's application (its settings, no session folder), served on a thread until stopped."""
    from edx_live.shell.app import App
    from edx_live.shell.demo import demo_settings

    return App(demo_settings({"quantify": {"kfactors": {}}, **overrides})).start()


def _produce(endpoint: str, path: Path, frames: int, acquisition_id: str, pause_after: int | None = None,
             resume=None):

    from edx_adapters.producer import make_socket, send_replay
    from edx_adapters.replay import open_replay

    replay = open_replay(path, frames=frames, acquisition_id=acquisition_id)

    def run():
        sock = make_socket(endpoint, "push", bind=False)
        try:
            send_replay(replay, sock, interval_s=0.2, on_sweep=lambda done: (
                resume.wait(180) if pause_after is not None and done.frame_index + 1 == pause_after else None))
        finally:
            sock.close(linger=10_000)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return replay, thread


def _latest(feed, workflow: str):
    s = feed.snapshot()
    return s.clusters[workflow][0], s.composition[workflow]


def _png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    return np.asarray(mpimg.imread(str(path)))


def test_live_page_through_the_real_service(data_dir, browser_page):
    """A real acquisition replayed through the service: both maps, the ADF image, spectra and compositions
    fill in, a later refit changes the page, and a new acquisition replaces the old one."""
    from edx_live.view.server import ViewerProcess

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    app = _service({"refit": {"interval_s": 60.0, "every_frames": 2}})
    # the viewer as a user runs it (edx-live view), in a process of its own; the test follows the same documents
    viewer = ViewerProcess(app.output_endpoint, port=0).start()
    feed = Feed(app.output_endpoint).start()
    try:
        browser_page.goto(viewer.url)
        resume = threading.Event()
        path = data_dir / "test_TEM.bcf"
        first_id, second_id = "view-first-acquisition", "view-second-acquisition"
        first, producer = _produce(app.input_endpoint, path, 6, first_id, pause_after=4, resume=resume)

        def refitted_both():
            s = feed.snapshot()
            return (s.acquisition_id == first_id and len(s.composition) == 2 and s.image is not None
                    and all(h.refit >= 1 for h, _ in s.clusters.values()))

        _wait(refitted_both, timeout_s=300, step_s=0.2)
        s = feed.snapshot()
        browser_page.wait_for_selector(f"text=refit {s.composition['pca-gmm'].refit},", timeout=20000)
        browser_page.wait_for_timeout(1000)  # the page's periodic refresh
        live = ARTIFACTS / "live_refit.png"
        browser_page.screenshot(path=str(live), full_page=True)
        for name in ("edx-map-pca-gmm", "edx-map-umap-hdbscan", "edx-adf", "edx-spectra-log"):
            shot = ARTIFACTS / f"live_{name}.png"
            browser_page.locator(f".{name}").first.screenshot(path=str(shot))
            pixels = _png(shot)[40:-40, 60:-20, :3]  # inside the axes
            assert pixels.std() > 0.05, f"{name} is blank"
        for wf in ("pca-gmm", "umap-hdbscan"):
            table = browser_page.locator(f".edx-composition-{wf} table").inner_text()
            assert "Ti" in table and "±" in table, table
            legend = browser_page.locator(f".edx-legend-{wf} table").inner_text()
            assert "…" not in legend and model.short_label(_latest(feed, wf)[1].clusters[0].elements) in legend, legend
        # the stop advice and the best follow-up target are on the page, the targets boxed on the maps
        progress = browser_page.locator("text=stop advice").first
        assert progress.count() == 1
        assert browser_page.locator("text=regions").count() >= 1
        targets = feed.snapshot().targets
        assert targets is not None and targets.acquisition_id == first_id
        for wf in ("pca-gmm", "umap-hdbscan"):
            boxes = model.target_boxes(targets, wf)
            assert len(boxes["left"]) == sum(wf in t.workflows for t in targets.targets)
            assert all(0 <= t < b <= targets.scan_shape[0] for t, b in zip(boxes["top"], boxes["bottom"]))
        # the spectra mark the lines the composition quantified
        comp = s.composition["pca-gmm"]
        assert {"Ti_Ka", "O_Ka"} <= set(comp.fit["marked_lines"]), comp.fit.get("marked_lines")

        resume.set()
        producer.join(120)
        # the final refit: its compositions stay the newest (a final status is followed by ordinary ones)
        _wait(lambda: (len(feed.snapshot().composition) == 2
                       and all(c.final for c in feed.snapshot().composition.values())), timeout_s=300, step_s=0.2)
        browser_page.wait_for_selector("text=(final),", timeout=30000)
        browser_page.wait_for_timeout(1000)
        final = ARTIFACTS / "final.png"
        browser_page.screenshot(path=str(final), full_page=True)
        a, b = _png(live), _png(final)
        assert a.shape != b.shape or np.abs(a - b).mean() > 1e-3, "the page did not change after later refits"

        second, producer = _produce(app.input_endpoint, path, 2, second_id)
        browser_page.wait_for_selector(f"text={second_id}", timeout=60000)
        assert browser_page.locator(f"text={first_id}").count() == 0
        producer.join(120)
        browser_page.screenshot(path=str(ARTIFACTS / "second_acquisition.png"), full_page=True)
    except BaseException:
        browser_page.screenshot(path=str(ARTIFACTS / "failed.png"), full_page=True)
        raise
    finally:
        viewer.stop()
        feed.stop()
        app.close(timeout_s=60)


def test_feed_picks_up_a_restarted_service():
    """The service's PUB socket goes away and comes back on the same address: the feed follows it."""
    ctx = zmq.Context.instance()
    first = ctx.socket(zmq.PUB)
    port = first.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    ex = _examples()
    feed = Feed(endpoint).start()
    try:
        _publish_until(first, [_retitled(ex["status"], "before-restart")],
                       lambda: feed.snapshot().acquisition_id == "before-restart")
        first.close(linger=0)
        again = ctx.socket(zmq.PUB)
        try:
            _wait(lambda: _try_bind(again, endpoint), timeout_s=20)
            _publish_until(again, [_retitled(ex["status"], "after-restart")],
                           lambda: feed.snapshot().acquisition_id == "after-restart", timeout_s=30)
        finally:
            again.close(linger=0)
    finally:
        feed.stop()


def _try_bind(sock: zmq.Socket, endpoint: str) -> bool:
    try:
        sock.bind(endpoint)
        return True
    except zmq.ZMQError:
        return False


def test_view_command_serves_the_page_and_refuses_a_taken_port():
    """``edx-live view`` as a user starts it: the page answers on loopback; a second one on the same port
    stops at start-up saying why."""
    import urllib.request

    from edx_live.view.server import ViewerProcess

    first = ViewerProcess("tcp://127.0.0.1:1", port=0).start()
    try:
        assert first.url.startswith("http://127.0.0.1:")
        page = urllib.request.urlopen(first.url, timeout=30).read().decode()
        import re

        scripts = re.findall(r'src="([^"]+)"', page)
        assert scripts and all(s.startswith("/") or s.startswith(first.url.rstrip("/")) for s in scripts), scripts
        port = int(first.url.rstrip("/").rsplit(":", 1)[1])
        with pytest.raises(OSError, match="cannot serve on 127.0.0.1:%d" % port):
            ViewerProcess("tcp://127.0.0.1:1", port=port).start()
    finally:
        first.stop()


def test_two_tabs_on_one_viewer(viewer, browser_page):
    """Every tab gets a page of its own (no Bokeh model is shared between documents): both show the tables."""

    sock, v = viewer
    ex = _examples()
    docs = [_retitled(ex["status"], "acq-a"), _retitled(ex["clusters"], "acq-a"),
            _retitled(ex["composition"], "acq-a")]
    with _publishing(sock, docs):
        for tab in (browser_page, browser_page.context.browser.new_page()):
            assert tab.goto(v.url).status == 200
            tab.wait_for_selector("text=n.d. (< 3.50)", timeout=20000)  # the composition table
