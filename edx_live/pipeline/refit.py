"""One refit: both segmentations of a snapshot, then the composition of every cluster.

:class:`Analyzer` is the callable the service runs in its refit thread. What a refit
carries over to the next (the latest result per workflow, convergence, the quantification
set-up) lives in the acquisition's :class:`~edx_live.pipeline.state.AcquisitionRecord`, which
the caller passes; without one, the analyzer keeps a record of the last acquisition it saw.
It imports no sockets.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edx_protocol import Start

from edx_live.core.snapshot import Snapshot
from edx_live.pipeline.documents import clusters_document, composition_document
from edx_live.logs import get_logger
from edx_live.pipeline.state import AcquisitionRecord
from edx_live.pipeline.workers import WorkflowPool, parallel_wanted
from edx_live.quantify import ClusterQuantifier
from edx_live.quantify.composition import Setup
from edx_live.quantify.kfactors import USER_KFACTORS
from edx_live.quantify.setup import acquisition_setup, with_peaks_of
from edx_live.quantify.lines import highest_line_kev
from edx_live.segment import PcaGmm, UmapHdbscan, segment
from edx_live.segment.result import SegmentationResult
from edx_live.suggest import follow_up_targets, stop_advice, targets_document
from edx_live.segment.tracking import ConvergenceState, ConvergenceTracker, match_clusters, row_labels

#: Channels fitted reach this far above the highest line of interest (about 3 FWHM at 10 keV).
LINE_MARGIN_KEV = 0.5
#: UMAP epochs of a warm-started refit (``warm_epochs = "auto"``): until the map holds still, and after.
WARM_EPOCHS, SETTLED_EPOCHS = 60, 20

log = get_logger("segment")
qlog = get_logger("quantify")


@dataclass
class WorkflowOutput:
    """The latest answer of one workflow; ``snapshot`` describes its input, without the cube."""

    snapshot: Snapshot
    result: SegmentationResult
    quantification: object | None
    quantify_seconds: float
    convergence: ConvergenceState | None = None


class Analyzer:
    """Segment and quantify snapshots with the estimators the settings describe.

    Parameters
    ----------
    settings : edx_live.config.Settings
    """

    def __init__(self, settings):
        self.errors = 0
        self._record: AcquisitionRecord | None = None  # when the caller passes none
        self.pool: WorkflowPool | None = None  # the worker process of [refit] parallel, once started
        self.reconfigure(settings)

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

    def reconfigure(self, settings) -> None:
        """Use ``settings`` from the next refit on (a running refit keeps the ones it started with)."""
        self.settings = settings
        self._quantifier = ClusterQuantifier(settings.quantify.options())
        q = settings.quantify
        self._user_kfactors = q.user_kfactors()
        self._user_source = USER_KFACTORS + (f" and table {q.kfactor_table}" if q.kfactor_table else "")
        r = settings.refit
        if not parallel_wanted(r.parallel, r.workflows):
            self.close()
        elif r.parallel == "on":
            self._pool()

    def prepare(self, pixels: int) -> WorkflowPool | None:
        """An acquisition of ``pixels`` binned pixels has started: start the worker now if its refits will want it.

        Its warm-up (numba compiling UMAP, about a minute of one core) then overlaps the
        acquisition's first seconds instead of its first refits.
        """
        r = self.settings.refit
        return self._pool() if parallel_wanted(r.parallel, r.workflows, pixels=pixels) else None

    def _pool(self) -> WorkflowPool:
        if self.pool is None:
            log.info("worker_starting", workflow=self.settings.refit.workflows[-1])
            self.pool = WorkflowPool()
        return self.pool

    def close(self) -> None:
        """Stop the worker process, if one was started."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    @property
    def latest(self) -> dict[str, WorkflowOutput]:
        """The latest output by workflow of the last acquisition analysed without a record of its own."""
        return {} if self._record is None else self._record.outputs

    def _record_for(self, snapshot: Snapshot) -> AcquisitionRecord:
        aid = snapshot.start.acquisition_id
        if self._record is None or self._record.acquisition_id != aid:
            self._record = AcquisitionRecord(aid)
        return self._record

    def __call__(self, snapshot: Snapshot, record: AcquisitionRecord | None = None) -> Iterator[tuple]:
        """Yield each document of the refit as soon as it is ready; update ``record`` (the acquisition's).

        The first workflow's cluster map goes out before the second workflow
        starts, so the service publishes it without waiting for the whole refit.
        The total spectrum and the quantification setup are worked out once per
        snapshot, after the first map has gone out, and shared by the workflows.
        """
        record = record if record is not None else self._record_for(snapshot)
        prepared = None
        maps, compositions = {}, {}  # this refit's documents, for the targets and the advice
        ahead = self._ahead(snapshot, record)
        for workflow in self.settings.refit.workflows:
            try:
                result, state, document = self._segment(workflow, snapshot, record, ahead.get(workflow))
            except Exception:  # one workflow failing on odd data must not stop the live service
                self._failed(log, "segment_failed", workflow, snapshot)
                continue
            record.outputs[workflow] = WorkflowOutput(snapshot.described(), result, None, 0.0, state)
            maps[workflow], compositions[workflow] = document, None
            yield document
            try:
                prepared = prepared or self._prepare_quantify(snapshot, record)
                quant, seconds = self._quantify(snapshot, result, *prepared)
                document = None if quant is None else composition_document(snapshot, result, quant, seconds)
            except Exception:
                self._failed(qlog, "quantify_failed", workflow, snapshot)
                continue
            record.outputs[workflow] = dataclasses.replace(record.outputs[workflow], quantification=quant,
                                                           quantify_seconds=seconds)
            if document is not None:
                compositions[workflow] = document[0]
                yield document
        if maps:
            yield from self._suggest(snapshot, maps, compositions)

    def _suggest(self, snapshot: Snapshot, maps: dict, compositions: dict) -> Iterator[tuple]:
        """The refit's follow-up targets and stop advice (``[targets]``, ``[advice]``), from its documents."""
        s = self.settings
        try:
            if s.targets.enabled:
                targets = follow_up_targets(snapshot.start, maps, compositions, s.targets.options())
                yield targets_document(snapshot.start, snapshot.refit, snapshot.frames, snapshot.counts,
                                       snapshot.final, targets), {}
            if s.advice.enabled:
                yield stop_advice(snapshot.start, maps, compositions, snapshot.elapsed_s, s.advice.options()), {}
        except Exception:  # the maps and compositions are out already: a failure here loses only the suggestion
            self._failed(log, "suggest_failed", "both", snapshot)

    def _failed(self, logger, event: str, workflow: str, snapshot: Snapshot) -> None:
        """Count and log (with the traceback) a workflow's failure in this refit."""
        self.errors += 1
        logger.exception(event, workflow=workflow, acquisition_id=snapshot.start.acquisition_id,
                         refit=snapshot.refit, shape=list(snapshot.cube.shape), counts=snapshot.counts)

    def _ahead(self, snapshot: Snapshot, record: AcquisitionRecord) -> dict:
        """Start the last workflow in the worker process, when ``[refit] parallel`` wants it: {workflow: future}."""
        r = self.settings.refit
        rows, columns = snapshot.cube.shape[:2]
        if not parallel_wanted(r.parallel, r.workflows, pixels=rows * columns):
            return {}
        workflow = r.workflows[-1]
        try:
            pending = self._pool().submit(snapshot.cube, self._estimator_for(workflow, snapshot, record), workflow,
                                          snapshot.offset_kev, snapshot.scale_kev)
        except Exception:  # the refit thread segments it, as without a worker
            log.exception("worker_submit_failed", workflow=workflow)
            return {}
        return {} if pending is None else {workflow: pending}

    def _estimator_for(self, workflow: str, snapshot: Snapshot, record: AcquisitionRecord):
        """The workflow's estimator for this snapshot, started from the previous refit's embedding."""
        end = snapshot.offset_kev + snapshot.scale_kev * snapshot.cube.shape[-1]
        estimator = self.estimator(workflow, snapshot.start, end)
        output = record.outputs.get(workflow)
        if output is not None and output.result.warm_start and "init" in estimator.get_params():
            estimator.set_params(init=output.result.warm_start.get("embedding"),
                                 warm_epochs=self._warm_epochs(output.convergence))
        return estimator

    def _warm_epochs(self, state: ConvergenceState | None) -> int:
        """UMAP epochs of a warm refit: ``[umap_hdbscan] warm_epochs``, or for ``auto`` fewer once the map holds.

        The map holds still once the last refit agreed with the one before it (label agreement
        and spectra within ``[tracking]``, same cluster count): the embedding it hands on then
        needs only to settle the new counts, not to be drawn again.
        """
        setting = self.settings.umap_hdbscan.warm_epochs
        if setting != "auto":
            return int(setting)
        return SETTLED_EPOCHS if state is not None and state.stable_refits >= 1 else WARM_EPOCHS

    def _segment(self, workflow: str, snapshot: Snapshot, record: AcquisitionRecord, pending=None):
        """Segment (or take the worker's result), give the clusters their tracked ids, build the ``clusters`` document."""
        previous = record.outputs[workflow].result if workflow in record.outputs else None
        result = None if pending is None or self.pool is None else self.pool.result(pending)
        if result is None:  # no worker, or it died: segment here
            result = segment(snapshot.cube, self._estimator_for(workflow, snapshot, record), workflow,
                             offset_kev=snapshot.offset_kev, scale_kev=snapshot.scale_kev)
        matching, state = self._track(workflow, previous, result, record)
        result = matching.result
        document = clusters_document(snapshot, result, matching, state)
        log.info("segmented", workflow=workflow, acquisition_id=snapshot.start.acquisition_id,
                 refit=snapshot.refit, clusters=result.n_clusters, noise=result.noise_pixels,
                 appeared=matching.appeared, vanished=matching.vanished, agreement=state.ari,
                 converged=state.converged, seconds=round(result.fit_seconds, 3))
        return result, state, document

    def _track(self, workflow: str, previous: SegmentationResult | None, result: SegmentationResult,
               record: AcquisitionRecord):
        """Give clusters the ids of the previous refit of the same acquisition; measure the change."""
        t = self.settings.tracking
        matching = match_clusters(previous, result, pixel_weight=t.pixel_weight, min_similarity=t.min_similarity)
        tracker = record.convergence.setdefault(workflow, ConvergenceTracker(
            ari_threshold=t.ari_threshold, spectrum_threshold=t.spectrum_threshold, patience=t.patience))
        return matching, tracker.update(previous, matching.result)

    def _prepare_quantify(self, snapshot: Snapshot, record: AcquisitionRecord
                          ) -> tuple[np.ndarray, Setup | None, str | None]:
        """(total spectrum, setup, None), or (total, None, why nothing can be quantified yet)."""
        total = snapshot.cube.reshape(-1, snapshot.cube.shape[-1]).sum(axis=0, dtype=np.float64)
        try:
            return total, self._setup(snapshot, total, record.setup), None
        except ValueError as exc:  # SetupError, LineError, KFactorError
            return total, None, str(exc)

    def _quantify(self, snapshot: Snapshot, result: SegmentationResult, total: np.ndarray, setup: Setup | None,
                  reason: str | None):
        if setup is None:
            qlog.warning("not_quantified", acquisition_id=snapshot.start.acquisition_id, workflow=result.workflow,
                         reason=reason)
            return None, 0.0
        t0 = time.perf_counter()
        # The quantifier numbers clusters by row; a tracked result's labels are ids, which may have gaps.
        quant = self._quantifier(snapshot.cube, row_labels(result), result.n_clusters, setup,
                                 weights=result.confidence, total=total, random_state=0, frames=snapshot.frames,
                                 seconds=snapshot.elapsed_s)
        seconds = time.perf_counter() - t0
        qlog.info("quantified", workflow=result.workflow, clusters=result.n_clusters, lines=list(setup.xray_lines),
                  intensities=quant.intensity_method, kfactors=setup.kfactor_source.partition(":")[0],
                  resolution_ev=quant.fit.get("resolution_ev"), seconds=round(seconds, 3))
        return quant, seconds

    def _setup(self, snapshot: Snapshot, total: np.ndarray, cache: dict) -> Setup:
        """The acquisition's lines and k-factors, worked out once per acquisition.

        Proposed elements are proposed again at every refit, from more counts, and the energy
        axis is calibrated again when the counts have grown ``recalibrate_growth`` times; with
        ``fit_only_elements = "auto"`` the peaks of the total spectrum that are not
        quantified join the model as fit-only elements.
        """
        key = snapshot.start.acquisition_id
        q = self.settings.quantify
        setup = cache.get("setup")  # the acquisition's own record: never another acquisition's set-up
        counts = float(total.sum())
        grown = "axis" in q.calibrate and counts >= q.recalibrate_growth * cache.get("counts", 0.0)
        if setup is None or setup.elements_source.startswith("proposed") or grown:
            setup = acquisition_setup(start=snapshot.start, options=q.setup_options(), offset_kev=snapshot.offset_kev,
                                      scale_kev=snapshot.scale_kev, channels=snapshot.cube.shape[-1], total=total,
                                      user_kfactors=self._user_kfactors, user_source=self._user_source)
            calibrated_at = counts
        else:
            calibrated_at = cache["counts"]
        if q.fit_only_elements == "auto":
            setup = with_peaks_of(setup, total)
        if cache.get("setup") != setup:
            axis = setup.axis
            qlog.info("quantify_setup", acquisition_id=key, lines=list(setup.xray_lines), fit_only=setup.fit_only,
                      elements_source=setup.elements_source, kfactor_source=setup.kfactor_source,
                      kfactors=setup.kfactors, axis_offset_kev=setup.offset_kev, axis_scale_kev=setup.scale_kev,
                      axis_calibrated=None if axis is None else axis.applied,
                      axis_lines=None if axis is None else list(axis.lines))
        cache.update(setup=setup, counts=calibrated_at)
        return setup
