"""``report.png``: one readable A4 page whose colours, lines and table say what the results say."""

from __future__ import annotations

import numpy as np
import pytest
from edx_protocol import Detector, EnergyAxis, Start
from matplotlib.colors import to_rgb
from matplotlib.text import Text

from edx_live.pipeline.refit import WorkflowOutput
from edx_live.core.snapshot import Snapshot
from edx_live.export import draw_report, write_report
from edx_live.export.report import CLUSTER_COLOURS, DPI, PAGE_INCHES, THEORETICAL_MARK, composition_table, marked_lines
from edx_live.quantify import quantify_clusters
from edx_live.segment.result import SegmentationResult

PIL = pytest.importorskip("PIL.Image")

OFFSET, SCALE, CHANNELS = 0.1, 0.02, 500
IDS = (1, 3, 4, 6, 7, 10, 12, 13)  # tracked ids with gaps: colours follow the id, not the row
ELEMENTS = ["Fe", "Pt", "Cu", "Si", "O", "Al"]  # no Al line in any spectrum


def _start() -> Start:
    return Start(acquisition_id="nb-7", seq=0, scan_shape=(16, 16),
                 energy_axis=EnergyAxis(offset_kev=OFFSET, scale_kev=SCALE, channels=CHANNELS),
                 beam_energy_kev=200.0, detectors=[Detector(elevation_deg=18.0, azimuth_deg=45.0)],
                 pixel_size=0.8, pixel_unit="nm", elements=ELEMENTS, title="Eight phases")


def _spectra(rng) -> np.ndarray:
    energy = OFFSET + SCALE * np.arange(CHANNELS)
    peaks = [6.40, 9.44, 8.05, 1.74, 0.525]  # Fe Ka, Pt La, Cu Ka, Si Ka, O Ka
    mix = rng.uniform(0.1, 1.0, size=(len(IDS), len(peaks)))
    shapes = np.exp(-((energy[None] - np.array(peaks)[:, None]) / 0.06) ** 2 / 2)
    return rng.poisson(30 + 4e3 * mix @ shapes).astype(np.float64)


def _output(start: Start, kfactors) -> WorkflowOutput:
    rng = np.random.default_rng(7)
    rows = np.repeat(np.arange(len(IDS)), 8).reshape(8, 8)
    labels = np.asarray(IDS)[rows]
    labels[0, :3] = -1
    spectra = _spectra(rng)
    pixels = np.array([(labels == i).sum() for i in IDS])
    result = SegmentationResult("pca-gmm", labels, spectra, pixels, confidence=rng.uniform(0, 1, (8, 8)),
                                choices={"cluster_ids": list(IDS)})
    quant = quantify_clusters(spectra, offset_kev=OFFSET, scale_kev=SCALE, beam_energy_kev=200.0,
                              elements=ELEMENTS, kfactors=kfactors, replicas=4, intensities="windows",
                              pixels=pixels, random_state=0)
    return WorkflowOutput(Snapshot(start, None, 2, OFFSET, SCALE, 9, int(spectra.sum()), 4, True), result,
                          quant, 0.1)


@pytest.fixture(scope="module")
def outputs():
    start = _start()
    measured = {f"{el}_{line}": k for el, line, k in
                zip(ELEMENTS, ["Ka", "La", "Ka", "Ka", "Ka", "Ka"], [1.45, 5.08, 1.6, 1.0, 2.0, 1.05])}
    return start, {"pca-gmm": _output(start, measured), "umap-hdbscan": _output(start, None)}


def _pixels(path) -> np.ndarray:
    return np.asarray(PIL.open(path).convert("RGB"))


def _has_colour(rgb: np.ndarray, colour: str) -> bool:
    target = np.round(np.array(to_rgb(colour)) * 255).astype(int)
    return bool((np.abs(rgb.astype(int) - target).max(axis=-1) <= 1).any())


@pytest.fixture(scope="module")
def page(outputs, tmp_path_factory):
    start, latest = outputs
    path = tmp_path_factory.mktemp("report") / "report.png"
    total = np.full(start.scan_shape, 100.0)
    write_report(path, start, total, latest, facts={"frames": 9, "counts": 123456},
                 settings={"spatial bin": "2 x 2"}, versions={"edx_live": "0.1.0"})
    return path, _pixels(path)


def test_page_is_a4_landscape_and_not_blank(page):
    path, rgb = page
    assert PIL.open(path).size == (int(PAGE_INCHES[0] * DPI), int(PAGE_INCHES[1] * DPI))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 500
    assert rgb.std() > 20
    assert (rgb < 250).any(axis=-1).mean() > 0.08  # ink on more than a sliver of the page


def test_cluster_colours_follow_the_ids(page):
    _, rgb = page
    for cluster_id in IDS:
        assert _has_colour(rgb, CLUSTER_COLOURS[cluster_id % len(CLUSTER_COLOURS)]), cluster_id
    # ids 0, 2 and 5 are not in the result: were colours taken by row, these would show
    for absent in (0, 2, 5):
        assert not _has_colour(rgb, CLUSTER_COLOURS[absent]), absent


def test_every_text_stays_on_the_page_and_tables_in_their_panels(outputs):
    start, latest = outputs
    fig = draw_report(start, np.ones(start.scan_shape), latest,
                      facts={"frames": 9, "source": "a/rather/long/path/to/" + "x" * 60 + ".hspy"},
                      settings={f"setting {i}": "a value of some length" for i in range(11)},
                      versions={name: "1.2.3" for name in ("edx_live", "hyperspy", "exspy", "numpy", "sklearn")})
    fig.canvas.draw()  # places axis labels and legends
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    ticks = {id(label) for ax in fig.axes for label in ax.get_xticklabels() + ax.get_yticklabels()}
    shown = [label for ax in fig.axes for axis, labels, lim in ((0, ax.get_xticklabels(), ax.get_xlim()),
                                                                (1, ax.get_yticklabels(), ax.get_ylim()))
             for label in labels if min(lim) <= label.get_position()[axis] <= max(lim)]  # ticks drawn
    texts = [t for t in fig.findobj(Text) if id(t) not in ticks and t.get_visible() and t.get_text().strip()]
    assert len(texts) > 30 and len(shown) > 30
    texts += shown
    for text in texts:
        box = text.get_window_extent(renderer)
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, \
            text.get_text()
    tables = [ax.tables[0] for ax in fig.axes if ax.tables]
    assert len(tables) == 2
    for table in tables:
        box, panel = table.get_window_extent(renderer), table.axes.get_window_extent(renderer)
        assert panel.x0 - 1 <= box.x0 and box.x1 <= panel.x1 + 1
        assert min(cell.get_text().get_fontsize() for cell in table.get_celld().values()) >= 6


def test_the_image_is_drawn_under_the_maps(outputs, tmp_path):
    start, latest = outputs
    flat = np.ones(start.scan_shape)
    checkerboard = (np.indices(start.scan_shape).sum(axis=0) % 2).astype(np.float32)
    plain, drawn = tmp_path / "plain.png", tmp_path / "image.png"
    write_report(plain, start, flat, latest)
    write_report(drawn, start, flat, latest, image=checkerboard, image_detector="HAADF")
    a, b = _pixels(plain), _pixels(drawn)
    panel = (slice(120, 460), slice(60, 400))  # the image panel, top left
    assert a[panel].std() < 30 < b[panel].std()  # a uniform count map, then a checkerboard
    assert ((b[panel] < 10).all(axis=-1).sum() > 1000) and ((b[panel] > 245).all(axis=-1).sum() > 1000)


def test_the_table_prints_undetected_elements_and_theoretical_kfactors(outputs):
    _, latest = outputs
    for workflow, theoretical in (("pca-gmm", False), ("umap-hdbscan", True)):
        quant = latest[workflow].quantification
        assert quant.kfactors_theoretical is theoretical
        header, rows, colours = composition_table(quant, IDS)
        assert header[:2] == ["id", "px"] and header[-1] == "S/R"
        assert all(h.endswith(THEORETICAL_MARK) == theoretical for h in header[2:-1])
        assert [r[0] for r in rows] == [str(i) for i in IDS]
        assert colours == [CLUSTER_COLOURS[i % len(CLUSTER_COLOURS)] for i in IDS]
        al = list(quant.xray_lines).index("Al_Ka")
        for row, cells in enumerate(rows):
            assert not quant.detected[row, al]
            assert cells[2 + al] == f"n.d. (< {quant.detection_limit[row, al]:.1f})"
            fe = list(quant.xray_lines).index("Fe_Ka")
            assert cells[2 + fe] == f"{quant.atomic.value[row, fe]:.1f}±{quant.atomic.sigma[row, fe]:.1f}"


def test_marked_lines_are_exspys_energies(outputs):
    from exspy.material import elements as database

    _, latest = outputs
    marked = dict(marked_lines(latest["pca-gmm"]))
    assert set(marked) == set(latest["pca-gmm"].quantification.xray_lines)
    for line, energy in marked.items():
        element, family = line.split("_")
        assert energy == database[element]["Atomic_properties"]["Xray_lines"][family]["energy (keV)"]


def test_a_page_before_any_refit(tmp_path):
    start = _start()
    path = write_report(tmp_path / "r.png", start, np.random.default_rng(0).poisson(5.0, start.scan_shape), {})
    rgb = _pixels(path)
    assert rgb.std() > 5 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20
