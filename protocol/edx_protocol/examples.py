"""The example messages behind ``protocol/golden``: one small acquisition, then one of each result.

The acquisition messages form a valid stream in order (seq 0 to 7) for a
4 x 6 scan with 32 channels, so a receiver can replay them end to end. Values
are fixed literals: the golden files must come out byte for byte the same on
every run.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .acquisition import (VELOX_NEXT_PIXEL, DenseFrame, Detector, EnergyAxis, EventsFrame, Image, StagePosition,
                          Start, Stop, VeloxFrame)
from .codec import describe, encode
from .results import (
    NOISE_LABEL,
    Advice,
    ClusterComposition,
    ClusterInfo,
    Clusters,
    Composition,
    ElementResult,
    TimeToTarget,
    Gaps,
    MeanImage,
    Plan,
    Status,
    Target,
    Targets,
    topic_for,
)

ACQUISITION_ID = "golden-0001"
SCAN_SHAPE = (4, 6)
ENERGY_AXIS = EnergyAxis(offset_kev=0.0, scale_kev=0.625, channels=32)
#: The scan's geometry as a controller reports it: 6 columns of 0.5 nm, rotated 90 degrees, stage in metres.
FIELD_OF_VIEW_M = 3e-09
SCAN_ROTATION_RAD = 1.5707963267948966
STAGE = StagePosition(x=1.25e-05, y=-4e-06, z=1e-07, alpha=0.05, beta=0.0)


class Example(NamedTuple):
    """One golden message: a header model, its arrays and, for a published document, its topic."""

    name: str
    description: str
    header: object
    arrays: dict[str, np.ndarray]
    topic: bytes | None = None

    def frames(self) -> list[bytes]:
        """The exact multipart message: ``[topic,] header, *buffers``."""
        frames = [bytes(f) for f in encode(self.header, self.arrays)]
        return [self.topic] + frames if self.topic is not None else frames


def _frame(model, seq: int, frame_index: int, arrays: dict[str, np.ndarray], **fields):
    return model(acquisition_id=ACQUISITION_ID, seq=seq, frame_index=frame_index,
                 arrays=describe(arrays), **fields)


def _start() -> Example:
    detectors = [Detector(name=f"SuperXG2{i + 1}", elevation_deg=18.0, azimuth_deg=azimuth,
                          energy_resolution_mnka_ev=136.0)
                 for i, azimuth in enumerate((45.0, 135.0, 225.0, 315.0))]
    header = Start(acquisition_id=ACQUISITION_ID, seq=0, scan_shape=SCAN_SHAPE, energy_axis=ENERGY_AXIS,
                   beam_energy_kev=200.0, detectors=detectors, pixel_size=0.5, pixel_unit="nm",
                   dwell_time_s=1e-05, expected_frames=3, elements=["Fe", "Pt"], xray_lines=["Fe_Ka", "Pt_La"],
                   instrument="example Super-X STEM", title="golden example acquisition",
                   field_of_view_m=FIELD_OF_VIEW_M, scan_rotation_rad=SCAN_ROTATION_RAD, stage_position=STAGE)
    return Example("start", "Start of a 4 x 6 scan, 32 channels of 0.625 keV, four detectors, with the "
                            "field of view, scan rotation and stage position.", header, {})


def _events() -> Example:
    arrays = {"pixel": np.array([0, 0, 5, 7, 23], dtype="<u4"),
              "channel": np.array([10, 11, 10, 31, 0], dtype="<u2")}
    return Example("frame_events", "Events frame without detector index: 5 X-rays of sweep 0.",
                   _frame(EventsFrame, 1, 0, arrays), arrays)


def _events_detector() -> Example:
    arrays = {"pixel": np.array([1, 2, 2, 12, 22, 23], dtype="<u4"),
              "channel": np.array([10, 10, 12, 30, 1, 29], dtype="<u2"),
              "detector": np.array([0, 1, 2, 3, 0, 3], dtype="|u1")}
    return Example("frame_events_detector", "Events frame with detector index: 6 X-rays of sweep 0.",
                   _frame(EventsFrame, 2, 0, arrays), arrays)


def _velox() -> Example:
    n = VELOX_NEXT_PIXEL
    arrays = {"stream": np.array([3, 17, n, n, 5, n, 9, 9, 30, n], dtype="<u2")}
    return Example("frame_velox", "Velox SpectrumStream chunk of detector 2, sweep 1: pixel 6 gets channels "
                                  "3 and 17, pixel 7 nothing, pixel 8 channel 5, pixel 9 channels 9, 9 "
                                  "and 30; the next chunk starts at pixel 10.",
                   _frame(VeloxFrame, 3, 1, arrays, pixel_start=6, detector=2), arrays)


def _dense(name: str, dtype: str, seq: int, pixel_start: int, values: dict[tuple[int, int], int]) -> Example:
    rows = 1 + max(p for p, _ in values)
    counts = np.zeros((rows, ENERGY_AXIS.channels), dtype=dtype)
    for (p, c), v in values.items():
        counts[p, c] = v
    arrays = {"counts": counts}
    what = np.dtype(dtype).name
    return Example(name, f"Dense block of {rows} whole spectra as {what} for pixels {pixel_start} to "
                         f"{pixel_start + rows - 1}, sweep 2.",
                   _frame(DenseFrame, seq, 2, arrays, pixel_start=pixel_start), arrays)


def _image() -> Example:
    arrays = {"image": np.array([[812, 790, 1021, 1500, 1496, 805], [799, 1010, 1488, 1502, 1017, 801]],
                                dtype="<u2")}
    header = Image(acquisition_id=ACQUISITION_ID, seq=6, frame_index=2, detector="HAADF", first_row=1,
                   arrays=describe(arrays))
    return Example("image", "HAADF image rows 1 and 2 (of 4) of sweep 2, as uint16.", header, arrays)


def _stop() -> Example:
    header = Stop(acquisition_id=ACQUISITION_ID, seq=7, frames=3, reason="complete")
    return Example("stop", "Stop after 3 sweeps.", header, {})


def acquisition_examples() -> list[Example]:
    """The golden producer messages, in the order a producer would send them."""
    return [_start(), _events(), _events_detector(), _velox(),
            _dense("frame_dense_u8", "|u1", 4, 0, {(0, 3): 1, (0, 31): 255, (1, 10): 2}),
            _dense("frame_dense_u16", "<u2", 5, 2, {(0, 10): 258, (1, 0): 1, (2, 31): 65535}),
            _image(), _stop()]


def _status() -> Example:
    header = Status(acquisition_id=ACQUISITION_ID, seq=4, frames=2, counts=17, state="acquiring",
                    messages=5, rejected={"pixel_out_of_range": 1}, gaps=Gaps(count=2, missing=[(3, 4)]),
                    refits=1, last_refit_s=0.75, scan_shape=SCAN_SHAPE, expected_frames=3, pixel_size=0.5,
                    pixel_unit="nm", title="golden example acquisition", count_rate=8.5)
    return Example("status", "Status while acquiring, after a gap of seq 3 to 4 and one rejected frame; "
                             "8.5 counts per second over the last status intervals.",
                   header, {}, topic_for("status"))


def _clusters() -> Example:
    labels = np.array([[0, 0, 1], [1, NOISE_LABEL, 1]], dtype="<u2")
    spectra = np.zeros((2, ENERGY_AXIS.channels), dtype="<u8")
    spectra[0, [10, 11, 31]] = [7, 2, 1]
    spectra[1, [0, 9, 30]] = [3, 4, 5]
    confidence = np.array([[1.0, 0.75, 0.5], [0.875, 0.0, 1.0]], dtype="<f4")
    arrays = {"labels": labels, "spectra": spectra, "confidence": confidence}
    clusters = [ClusterInfo(label=i, pixels=int((labels == i).sum()), counts=int(spectra[i].sum()))
                for i in range(len(spectra))]
    header = Clusters(acquisition_id=ACQUISITION_ID, seq=1, frames=3, counts=int(spectra.sum()), final=True,
                      workflow="pca-gmm", refit=2, refit_s=0.5, bin_factor=2,
                      energy_offset_kev=ENERGY_AXIS.offset_kev, energy_scale_kev=ENERGY_AXIS.scale_kev,
                      clusters=clusters, noise_pixels=int((labels == NOISE_LABEL).sum()),
                      choices={"n_components": 2, "n_clusters": 2, "criterion": "bic",
                               "bic": [-10.5, -12.25, -11.0]},
                      arrays=describe(arrays))
    return Example("clusters", "Final pca-gmm segmentation on 2 x 2 bins: 2 clusters and one noise bin, "
                               "with cluster-sum spectra and per-bin confidence.",
                   header, arrays, topic_for("clusters", "pca-gmm"))


def _composition() -> Example:
    clusters = [
        ClusterComposition(label=0, pixels=2, core_pixels=2, pixel_level="core", entropy_r=0.692,
                           entropy_r_sigma=0.004, elements={
            "Fe": ElementResult(atomic_percent=52.5, atomic_percent_sigma=3.25, intensity=1200.0,
                                atomic_percent_sigma_counting=3.0, atomic_percent_sigma_spread=1.25,
                                atomic_percent_sigma_bias=0.0, detection_limit_atomic_percent=1.5,
                                weight_percent=24.0, weight_percent_sigma=2.0, intensity_sigma=40.0),
            "Pt": ElementResult(atomic_percent=47.5, atomic_percent_sigma=3.25, intensity=3100.0,
                                atomic_percent_sigma_counting=3.0, atomic_percent_sigma_spread=1.25,
                                atomic_percent_sigma_bias=0.0, detection_limit_atomic_percent=2.25,
                                weight_percent=76.0, weight_percent_sigma=2.0, intensity_sigma=60.0)},
                           time_to_target=TimeToTarget(target_sigma_atomic_percent=1.0, reached=False,
                                                       reachable=True, limiting_element="Fe", counts_factor=9.0,
                                                       sweeps=24.0, seconds=12.0)),
        ClusterComposition(label=1, pixels=3, elements={
            "Fe": ElementResult(atomic_percent=90.0, atomic_percent_sigma=None, intensity=800.0),
            "Pt": ElementResult(atomic_percent=10.0, atomic_percent_sigma=None, intensity=95.0)}),
        ClusterComposition(label=2, pixels=1, core_pixels=1, pixel_level="all", elements={
            "Fe": ElementResult(atomic_percent=None, atomic_percent_sigma=None, intensity=4.0, intensity_sigma=2.5,
                                detected=False, detection_limit_atomic_percent=3.5),
            "Pt": ElementResult(atomic_percent=99.0, atomic_percent_sigma=0.5, intensity=95.0)}),
    ]
    header = Composition(acquisition_id=ACQUISITION_ID, seq=1, frames=3, counts=22, final=True,
                         workflow="umap-hdbscan", refit=2, quantify_s=0.125,
                         method="Cliff-Lorimer on fitted line areas",
                         kfactor_source="user: config/command line",
                         kfactors={"Fe_Ka": 1.450226, "Pt_La": 5.075602},
                         xray_lines=["Fe_Ka", "Pt_La"], clusters=clusters, intensity_method="model",
                         kfactors_theoretical=False, weighting="membership", elements_source="acquisition start",
                         entropy_species=["Fe", "Pt"], absorption_thickness_nm=None,
                         fit={"elements": ["Fe", "Pt"], "range": "0.20..13.94 keV", "resolution_ev": 131.5})
    return Example("composition", "Final umap-hdbscan composition of 3 clusters: cluster 0 measured on its "
                                  "core, with the time to a 1 at% sigma; cluster 1 without uncertainties; in "
                                  "cluster 2 Fe is not detected.", header, {}, topic_for("composition", "umap-hdbscan"))


def _mean_image() -> Example:
    image = np.full(SCAN_SHAPE, 800.0, dtype="<f4")
    image[1:3, 2:4] = 1500.0
    image[1:3, [1, 4]] = 1012.5
    arrays = {"image": image}
    header = MeanImage(acquisition_id=ACQUISITION_ID, seq=2, frames=3, counts=22, final=True, detector="HAADF",
                       sweeps=3, pixel_size=0.5, pixel_unit="nm", arrays=describe(arrays))
    return Example("mean_image", "Mean HAADF image of 3 sweeps of the 4 x 6 scan, sent at the stop.", header, arrays,
                   topic_for("image"))


def _targets() -> Example:
    # Box rows 2-4, columns 0-4 of the 4 x 6 scan: centre (row 3, column 2) is 1 row below and 1 column
    # left of the scan centre (2, 3): scan (x, y) = (-0.5 nm, -0.5 nm), rotated 90 degrees: (0.5 nm, -0.5 nm).
    plan = Plan(plan_name="edx_spectrum_image", kwargs={
        "region_px": [2, 0, 4, 4], "centre_px": [3.0, 2.0], "size_px": [2, 4], "centre_offset_m": [5e-10, -5e-10],
        "field_of_view_m": 2e-09, "dwell_time_s": 1e-05, "frames": 27})
    target = Target(rank=1, score=0.875, reasons=["rare_cluster", "boundary"], workflows=["pca-gmm", "umap-hdbscan"],
                    clusters={"pca-gmm": [1], "umap-hdbscan": [1]}, box_px=(2, 0, 4, 4), box=(1.0, 0.0, 2.0, 2.0),
                    centre_offset_m=(5e-10, -5e-10), stage_target=(1.25005e-05, -4.0005e-06), sweeps=27.0,
                    seconds=0.00216, dwell_time_s=1e-05,
                    dose_basis="time_to_target of pca-gmm cluster 1: 9 times the 3 sweeps so far, at the start's dwell",
                    plan=plan)
    header = Targets(acquisition_id=ACQUISITION_ID, seq=1, frames=3, counts=22, final=True, refit=2,
                     scan_shape=SCAN_SHAPE, pixel_size=0.5, pixel_unit="nm", field_of_view_m=FIELD_OF_VIEW_M,
                     scan_rotation_rad=SCAN_ROTATION_RAD, stage_position=STAGE, targets=[target])
    return Example("targets", "Follow-up targets of the final refit: one box of 2 x 4 scan pixels both workflows "
                              "support, with its stage position and the plan that would acquire it.",
                   header, {}, topic_for("targets"))


def _advice() -> Example:
    header = Advice(acquisition_id=ACQUISITION_ID, seq=1, frames=3, counts=22, final=False, refit=2, stop=False,
                    reason="not_yet", converged={"pca-gmm": True, "umap-hdbscan": False}, sigma_reached=False,
                    predicted_seconds=12.0, budget_s=60.0, elapsed_s=1.5, limiting="pca-gmm cluster 0: Fe",
                    message="keep acquiring: umap-hdbscan has not converged; about 12 s more until every "
                            "sigma reaches 1 at% (pca-gmm cluster 0: Fe)")
    return Example("advice", "Stop advice after refit 2: keep acquiring, one map has not converged and the "
                             "sigmas need about 12 s more, within the 60 s budget.", header, {}, topic_for("advice"))


def result_examples() -> list[Example]:
    """The golden published documents (their frames start with the topic)."""
    return [_status(), _clusters(), _composition(), _mean_image(), _targets(), _advice()]


def control_examples() -> list[tuple[str, str, dict]]:
    """Control requests and replies (SPEC section 11): (name, description, the msgpack map)."""
    set_values = {"refit.interval_s": 2.0}
    return [
        ("status_request", "Request: the status.", {"protocol": 1, "command": "status", "args": {}}),
        ("set_request", "Request: refit every 2 s.",
         {"protocol": 1, "command": "set", "args": {"values": set_values}}),
        ("set_reply", "Reply: the change is applied now.",
         {"protocol": 1, "command": "set", "ok": True, "result": {"values": set_values, "applied": "now"},
          "error": None}),
        ("set_refused", "Reply: a value out of range is refused with the reason.",
         {"protocol": 1, "command": "set", "ok": False, "result": None,
          "error": "set refused: refit.interval_s: Input should be greater than 0 (got -1)"}),
        ("export_request", "Request: write the session folder now, to a named folder.",
         {"protocol": 1, "command": "export", "args": {"folder": "/data/sessions/early-look"}}),
    ]
