"""One refit: both segmentations of a snapshot, then the composition of every cluster.

:class:`Analyzer` is the callable the service runs in its refit thread. It
keeps the latest result per workflow so that offline processing can export
them. It imports no sockets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from edx_protocol import Start

from edx_live.core.snapshot import Snapshot
from edx_live.documents import clusters_document, composition_document
from edx_live.logs import get_logger
from edx_live.quantify import quantify_clusters, resolve_lines
from edx_live.quantify.lines import highest_line_kev
from edx_live.segment import PcaGmm, UmapHdbscan, segment
from edx_live.segment.result import SegmentationResult
from edx_live.segment.tracking import ConvergenceState, ConvergenceTracker, Matching, match_clusters

#: Channels fitted reach this far above the highest line of interest (about 3 FWHM at 10 keV).
LINE_MARGIN_KEV = 0.5

log = get_logger("segment")
qlog = get_logger("quantify")


@dataclass
class WorkflowOutput:
    """The latest answer of one workflow."""

    snapshot: Snapshot
    result: SegmentationResult
    quantification: object | None
    quantify_seconds: float
    matching: Matching | None = None
    convergence: ConvergenceState | None = None


class Analyzer:
    """Segment and quantify snapshots with the estimators the settings describe.

    Parameters
    ----------
    settings : edx_live.config.Settings
    """

    def __init__(self, settings):
        self.settings = settings
        self.latest: dict[str, WorkflowOutput] = {}
        self.errors = 0
        self._convergence: dict[str, ConvergenceTracker] = {}

    def estimator(self, workflow: str, start: Start | None = None, energy_end_kev: float | None = None):
        """A fresh, unfitted estimator for ``workflow``.

        With ``start`` (and the end of the energy axis), an ``"auto"`` upper energy
        becomes the highest line of the acquisition's elements plus 0.5 keV.
        """
        p = self.settings.pca_gmm if workflow == "pca-gmm" else self.settings.umap_hdbscan
        energy_max = self._energy_max(p.energy_max_kev, start, energy_end_kev)
        if workflow == "pca-gmm":
            return PcaGmm(n_components=p.n_components, n_clusters=p.n_clusters, max_components=p.max_components,
                          max_clusters=p.max_clusters, covariance_type=p.covariance_type,
                          merge_mixed=p.merge_mixed, max_fit_samples=p.max_fit_samples, scaling=p.scaling,
                          energy_rebin=p.energy_rebin, energy_max_kev=energy_max, random_state=p.random_state)
        return UmapHdbscan(n_components=p.n_components, n_neighbors=p.n_neighbors,
                           min_cluster_size=p.min_cluster_size, scaling=p.scaling, energy_rebin=p.energy_rebin,
                           pca_components=p.pca_components, energy_max_kev=energy_max,
                           max_fit_samples=p.max_fit_samples,
                           random_state=p.random_state)

    def _energy_max(self, setting, start: Start | None, energy_end_kev: float | None) -> float | None:
        if setting == "all":
            return None
        if setting != "auto":
            return float(setting)
        if start is None or energy_end_kev is None:
            return None
        q = self.settings.quantify
        elements = list(q.elements or start.elements) + [line.partition("_")[0]
                                                         for line in (q.xray_lines or start.xray_lines)]
        top = highest_line_kev(set(elements), min(start.beam_energy_kev, energy_end_kev)) if elements else None
        return None if top is None else top + LINE_MARGIN_KEV

    def __call__(self, snapshot: Snapshot) -> list:
        documents = []
        for workflow in self.settings.refit.workflows:
            try:
                end = snapshot.offset_kev + snapshot.scale_kev * snapshot.cube.shape[-1]
                estimator = self.estimator(workflow, snapshot.start, end)
                previous = self._previous(workflow, snapshot)
                if previous is not None and previous.warm_start and "init" in estimator.get_params():
                    estimator.set_params(init=previous.warm_start.get("embedding"))
                result = segment(snapshot.cube, estimator, workflow,
                                 offset_kev=snapshot.offset_kev, scale_kev=snapshot.scale_kev)
            except Exception:  # one workflow failing on odd data must not stop the live service
                self.errors += 1
                log.exception("segment_failed", workflow=workflow, acquisition_id=snapshot.start.acquisition_id,
                              refit=snapshot.refit, shape=list(snapshot.cube.shape), counts=snapshot.counts)
                continue
            matching, state = self._track(workflow, snapshot, result)
            result = matching.result
            log.info("segmented", workflow=workflow, acquisition_id=snapshot.start.acquisition_id,
                     refit=snapshot.refit, clusters=result.n_clusters, noise=result.noise_pixels,
                     appeared=matching.appeared, vanished=matching.vanished, agreement=state.ari,
                     converged=state.converged, seconds=round(result.fit_seconds, 3))
            documents.append(clusters_document(snapshot, result, matching, state))
            try:
                quant, seconds = self._quantify(snapshot, result)
            except Exception:
                self.errors += 1
                qlog.exception("quantify_failed", workflow=workflow, acquisition_id=snapshot.start.acquisition_id,
                               refit=snapshot.refit)
                quant, seconds = None, 0.0
            self.latest[workflow] = WorkflowOutput(snapshot, result, quant, seconds, matching, state)
            if quant is not None:
                documents.append(composition_document(snapshot, result, quant, seconds))
        return documents

    def _previous(self, workflow: str, snapshot: Snapshot) -> SegmentationResult | None:
        """The last result of ``workflow`` for the same acquisition, if any."""
        before = self.latest.get(workflow)
        same = before is not None and before.snapshot.start.acquisition_id == snapshot.start.acquisition_id
        return before.result if same else None

    def _track(self, workflow: str, snapshot: Snapshot, result: SegmentationResult):
        """Give clusters the ids of the previous refit of the same acquisition; measure the change."""
        previous = self._previous(workflow, snapshot)
        t = self.settings.tracking
        matching = match_clusters(previous, result, pixel_weight=t.pixel_weight, min_similarity=t.min_similarity)
        tracker = self._convergence.setdefault(workflow, ConvergenceTracker(
            ari_threshold=t.ari_threshold, spectrum_threshold=t.spectrum_threshold, patience=t.patience))
        return matching, tracker.update(previous, matching.result)

    def _quantify(self, snapshot: Snapshot, result: SegmentationResult):
        q = self.settings.quantify
        start = snapshot.start
        try:
            lines = resolve_lines(q.xray_lines or start.xray_lines, q.elements or start.elements,
                                  start.beam_energy_kev, offset_kev=snapshot.offset_kev,
                                  scale_kev=snapshot.scale_kev, channels=snapshot.cube.shape[-1])
        except ValueError as exc:
            qlog.warning("no_lines", acquisition_id=start.acquisition_id, error=str(exc))
            return None, 0.0
        if len(lines) < 2:
            qlog.warning("too_few_lines", acquisition_id=start.acquisition_id, lines=lines,
                         hint="Cliff-Lorimer needs two lines or more: name elements in the acquisition "
                              "start or in [quantify] elements")
            return None, 0.0
        missing = [line for line in lines if line not in q.kfactors]
        if missing:
            qlog.warning("no_kfactors", acquisition_id=start.acquisition_id, lines=missing,
                         hint="give them with --kfactor LINE=VALUE or [quantify.kfactors]")
            return None, 0.0
        t0 = time.perf_counter()
        det = start.detectors[0]
        quant = quantify_clusters(result.spectra, offset_kev=snapshot.offset_kev, scale_kev=snapshot.scale_kev,
                                  beam_energy_kev=start.beam_energy_kev, xray_lines=lines,
                                  kfactors={k: q.kfactors[k] for k in lines}, pixels=result.pixels,
                                  elevation_deg=det.elevation_deg, azimuth_deg=det.azimuth_deg,
                                  energy_resolution_ev=det.energy_resolution_mnka_ev,
                                  replicas=q.replicas, random_state=0)
        seconds = time.perf_counter() - t0
        qlog.info("quantified", workflow=result.workflow, clusters=result.n_clusters, lines=lines,
                  seconds=round(seconds, 3))
        return quant, seconds
