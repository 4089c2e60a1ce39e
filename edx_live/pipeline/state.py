"""What the service knows, in one object: the acquisitions, their refits, and the service's counters.

:class:`ServiceState` holds the ingest state (:class:`~edx_live.core.ingest.Ingest`: the open
acquisitions and their counts) and, per acquisition, an :class:`AcquisitionRecord`: its refit
bookkeeping, the latest answer of each workflow, convergence, the quantification set-up, the
whether its final refit is done, and where its session folder and recording went. Nothing else
holds state about an acquisition, so this object can be inspected (``edx-live ctl list``), saved
(``edx_live.pipeline.checkpoint``) and restored after a crash (``edx_live.shell.recover``). Pure: no sockets, no threads, no clocks of its own (times are given).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from edx_live.core.ingest import Acquisition, Ingest, IngestOptions

#: Finished acquisitions remembered for ``list`` (their counts are released; this is their summary).
FINISHED_KEPT = 100


@dataclass
class AcquisitionRecord:
    """One acquisition's refits and results.

    Attributes
    ----------
    acquisition_id : str
    refits : int
        Refits submitted so far (the next refit's index).
    frames_at_refit, counts_at_refit : int
        What the last refit's snapshot held (no refit until counts grow).
    started_at, stopped_at : float or None
        Monotonic clock when the start and the stop arrived.
    outputs : dict
        Latest :class:`~edx_live.pipeline.refit.WorkflowOutput` by workflow.
    convergence : dict
        :class:`~edx_live.segment.tracking.ConvergenceTracker` by workflow.
    setup : dict
        The quantification set-up worked out for this acquisition: ``setup`` and the ``counts`` it was
        calibrated at.
    final_done : bool
        The final refit is done (its results are in ``outputs``); only the session folder may be missing.
    session_folder, recording : str or None
    """

    acquisition_id: str
    refits: int = 0
    frames_at_refit: int = 0
    counts_at_refit: int = 0
    started_at: float | None = None
    stopped_at: float | None = None
    outputs: dict = field(default_factory=dict)
    convergence: dict = field(default_factory=dict)
    setup: dict = field(default_factory=dict)
    final_done: bool = False
    session_folder: str | None = None
    recording: str | None = None

    def elapsed(self, now: float) -> float | None:
        """Seconds the acquisition has been acquiring (up to its stop); None when its start was not seen."""
        if self.started_at is None:
            return None
        return (self.stopped_at if self.stopped_at is not None else now) - self.started_at

    def reset(self) -> None:
        """Forget every refit and result (the counts were discarded): the next refit starts afresh."""
        self.refits = self.frames_at_refit = self.counts_at_refit = 0
        self.outputs, self.convergence, self.setup, self.final_done = {}, {}, {}, False


@dataclass
class ServiceState:
    """The service's state: ingest, each acquisition's record, and the counters published in ``status``."""

    ingest: Ingest = field(default_factory=Ingest)
    records: dict[str, AcquisitionRecord] = field(default_factory=dict)
    finished: list[dict] = field(default_factory=list)  # summaries of released acquisitions, newest last
    refits: int = 0  # refits completed
    refit_failures: int = 0  # whole refits that failed (the workflows count their own)
    last_refit_s: float | None = None
    last_refit_at: float = 0.0
    acquisitions_finished: int = 0
    published: Counter = field(default_factory=Counter)  # documents numbered per topic
    latest: dict = field(default_factory=dict)  # the last document published, by kind (any acquisition)

    @classmethod
    def with_options(cls, options: IngestOptions) -> "ServiceState":
        return cls(ingest=Ingest(options))

    def record(self, acq: Acquisition) -> AcquisitionRecord:
        """The record of ``acq``, created on first use."""
        return self.records.setdefault(acq.acquisition_id, AcquisitionRecord(acq.acquisition_id))

    @property
    def open(self) -> list[Acquisition]:
        """The acquisitions held: the current one, then those awaiting their final refit."""
        current = self.ingest.current
        acquiring = [current] if current is not None and current.state == "acquiring" else []
        return acquiring + list(self.ingest.pending)

    def release(self, acq: Acquisition) -> None:
        """``acq`` had its final refit: keep its summary, drop its record's results."""
        self.ingest.release(acq)
        self.acquisitions_finished += 1
        record = self.records.pop(acq.acquisition_id, None)
        self.finished.append(summary(acq, record))
        del self.finished[:-FINISHED_KEPT]

    def prune(self) -> None:
        """Drop the records of acquisitions no longer held (a new start freed the last one's cube)."""
        held = {a.acquisition_id for a in self.open}
        if self.ingest.current is not None:
            held.add(self.ingest.current.acquisition_id)
        self.records = {aid: r for aid, r in self.records.items() if aid in held}

    def listing(self) -> list[dict]:
        """Every acquisition held or finished since start-up, newest last (what ``ctl list`` returns)."""
        return self.finished + [summary(a, self.records.get(a.acquisition_id)) for a in self.open]


def summary(acq: Acquisition, record: AcquisitionRecord | None) -> dict:
    """A few facts about an acquisition, plain JSON."""
    out = {"acquisition_id": acq.acquisition_id, "state": acq.state, "frames": acq.frames,
           "counts": int(acq.accumulator.counts), "messages": acq.messages, "stop_reason": acq.stop_reason,
           "scan_shape": list(acq.start.scan_shape), "title": acq.start.title}
    if record is not None:
        out.update(refits=record.refits, session_folder=record.session_folder, recording=record.recording,
                   converged={wf: bool(o.convergence.converged) for wf, o in record.outputs.items()
                              if o.convergence is not None})
    return out
