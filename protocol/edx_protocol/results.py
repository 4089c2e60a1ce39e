"""Documents the service publishes: status, cluster maps, compositions, the simultaneous image,
follow-up targets and stop advice.

Each is sent on the service's PUB socket as ``[topic, header, *buffers]``; the
topic strings are in ``TOPICS``. Subscribe to a prefix (``b"clusters/"``) to
receive one kind for every workflow.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import ConfigDict, Field, model_validator

from .acquisition import (AcquisitionId, ArrayDescriptor, ArraySpec, StagePosition, _Model, _wire_json_schema,
                          check_arrays)
from .version import PROTOCOL_VERSION

WORKFLOWS = ("pca-gmm", "umap-hdbscan")
Workflow = Literal["pca-gmm", "umap-hdbscan"]

TOPICS = {
    "status": "status",
    "clusters": "clusters/{workflow}",
    "composition": "composition/{workflow}",
    "image": "image",
    "targets": "targets",
    "advice": "advice",
}


def topic_for(kind: str, workflow: str | None = None) -> bytes:
    """ZeroMQ topic of a published document kind (a key of ``TOPICS``); ``workflow`` for clusters and composition."""
    return TOPICS[kind].format(workflow=workflow).encode()


class _Document(_Model):
    model_config = ConfigDict(json_schema_extra=_wire_json_schema)

    protocol: Literal[1] = Field(default=PROTOCOL_VERSION, description="Wire protocol version.")
    acquisition_id: AcquisitionId | None = Field(description="The acquisition; null when there is none.")
    seq: int = Field(ge=0, description="Counter of documents on this topic since the service started.")
    frames: int = Field(ge=0, description="Sweeps completed so far in this acquisition.")
    counts: int = Field(ge=0, description="X-ray counts accumulated so far.")
    final: bool = Field(default=False, description=(
        "True on the documents of the last refit after the acquisition stopped (all of its counts) "
        "and on the status sent after that refit."))
    arrays: list[ArrayDescriptor] = Field(default_factory=list,
                                          description="The buffers that follow the header, in order.")


class Gaps(_Model):
    count: int = Field(0, ge=0, description="Messages missing from the sequence so far.")
    missing: list[tuple[int, int]] = Field(
        default_factory=list, description="Up to 100 most recent missing ranges [first, last] of seq.")


class Status(_Document):
    """Ingest state, sent at a fixed interval and on every start/stop."""

    kind: Literal["status"] = "status"
    state: Literal["idle", "acquiring", "stopped"]
    messages: int = Field(ge=0, description="Messages accepted for this acquisition (its start included).")
    rejected: dict[str, int] = Field(default_factory=dict, description=(
        "Messages dropped by reason since the service started, whatever acquisition they named."))
    acquisition_rejected: dict[str, int] = Field(default_factory=dict, description=(
        "Messages dropped by reason that named this acquisition (a subset of rejected)."))
    gaps: Gaps = Field(default_factory=Gaps)
    refits: int = Field(ge=0, description="Refits the service has completed.")
    last_refit_s: float | None = Field(default=None, description="Wall time of the last refit, in s.")
    scan_shape: tuple[int, int] | None = Field(default=None, description="(rows, columns) from the start.")
    expected_frames: int | None = Field(default=None, description="From the start, if the producer knew.")
    refit_errors: int = Field(default=0, ge=0, description="Workflow refits that failed (see the service log).")
    pixel_size: float | None = Field(default=None, description="Scan step, in pixel_unit (from the start).")
    pixel_unit: str = Field(default="nm", description="Unit of pixel_size (from the start).")
    title: str | None = Field(default=None, description="Title of the acquisition (from the start).")
    count_rate: float | None = Field(default=None, ge=0, description=(
        "X-ray counts accumulated per second, measured by the service over its last two status intervals "
        "while acquiring (after the stop: the last rate measured); None until two intervals have passed."))


class ClusterInfo(_Model):
    label: int = Field(ge=0)
    pixels: int = Field(ge=0, description="Binned pixels assigned to the cluster.")
    counts: int = Field(ge=0, description="X-ray counts in the cluster-sum spectrum.")


class Clusters(_Document):
    """One workflow's segmentation.

    Arrays: ``labels`` (<u2, binned rows x binned columns; 65535 = noise),
    ``spectra`` (<u8, n_clusters x channels), the cluster-sum spectra in label
    order, and optionally ``confidence`` (<f4, the shape of ``labels``), each
    binned pixel's confidence in its label, from 0 to 1 (mixture posterior or
    HDBSCAN membership), and ``outlier`` (<f4, the shape of ``labels``), HDBSCAN's
    GLOSH outlier score from 0 to 1.
    """

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "labels": ArraySpec(("<u2",), 2), "spectra": ArraySpec(("<u8",), 2),
        "confidence": ArraySpec(("<f4",), 2, optional=True), "outlier": ArraySpec(("<f4",), 2, optional=True)}

    kind: Literal["clusters"] = "clusters"
    workflow: Workflow
    refit: int = Field(ge=0, description="Index of this refit within the acquisition.")
    refit_s: float = Field(ge=0, description="Wall time of the segmentation, in s.")
    bin_factor: int = Field(ge=1, description="Scan pixels per label pixel along each axis.")
    energy_offset_kev: float = Field(description="Energy of channel 0 of the spectra, in keV.")
    energy_scale_kev: float = Field(description="Channel width of the spectra, in keV.")
    clusters: list[ClusterInfo] = Field(
        description="One entry per row of spectra, in increasing label order. Labels are cluster ids that "
                    "stay the same from one refit to the next and may have gaps; an id is never reused.")
    noise_pixels: int = Field(ge=0, description="Binned pixels left unassigned (HDBSCAN noise).")
    appeared: list[int] = Field(default_factory=list, description="Cluster ids new in this refit.")
    vanished: list[int] = Field(default_factory=list, description="Ids of the previous refit not found now.")
    agreement: float | None = Field(
        default=None, description="Adjusted Rand index of the label map with the previous refit's (None: first).")
    spectrum_change: float | None = Field(
        default=None, description="Largest Hellinger distance between a cluster's spectrum and its previous one.")
    converged: bool = Field(default=False, description="The answer met `convergence_criterion`.")
    convergence_criterion: str = Field(default="", description="The stated, configurable criterion.")
    choices: dict[str, float | int | str | list[float]] = Field(
        default_factory=dict, description="What the workflow chose from the data and why; no value is NaN "
                                          "or infinite (such a value is left out).")

    @model_validator(mode="after")
    def _arrays_follow_spec(self) -> "Clusters":
        by_name = check_arrays(self.arrays, self.ARRAYS)
        if by_name["spectra"].shape[0] != len(self.clusters):
            raise ValueError(f"spectra has {by_name['spectra'].shape[0]} rows for {len(self.clusters)} clusters")
        for name in ("confidence", "outlier"):
            if name in by_name and by_name[name].shape != by_name["labels"].shape:
                raise ValueError(f"{name} must have the shape of labels")
        return self


class ElementResult(_Model):
    atomic_percent: float | None = Field(
        description="Composition, in atomic percent; None when the cluster's line intensities do not determine it.")
    atomic_percent_sigma: float | None = Field(
        description="1-sigma uncertainty (counting and spread inside the cluster combined), None when unknown.")
    intensity: float | None = Field(
        description="Measured X-ray line intensity (fitted line area or window), in counts; None when not measured.")
    atomic_percent_sigma_counting: float | None = Field(
        default=None, description="Part of the 1-sigma from counting statistics alone.")
    atomic_percent_sigma_spread: float | None = Field(
        default=None, description="Part of the 1-sigma from the spread of the cluster's pixels beyond counting.")
    weight_percent: float | None = Field(default=None, description="Composition, in weight percent.")
    weight_percent_sigma: float | None = Field(default=None, description="1-sigma of weight_percent.")
    intensity_sigma: float | None = Field(default=None, description="Counting 1-sigma of the intensity.")
    atomic_percent_sigma_bias: float | None = Field(
        default=None, description="Part of the 1-sigma from the pixels the composition was measured on: the change "
                                  "between the cluster's core and its wider pixels beyond what noise explains.")
    detected: bool = Field(
        default=True, description="False when the line's intensity is below the detection threshold in this "
                                  "cluster; atomic_percent and its sigmas are then None.")
    detection_limit_atomic_percent: float | None = Field(
        default=None, ge=0, description="The at% at which the line would reach the detection threshold "
                                        "(3 counting sigma of the intensity, by default), other lines as measured.")


class TimeToTarget(_Model):
    """How much longer to acquire until every detected element's 1-sigma reaches a target."""

    target_sigma_atomic_percent: float = Field(gt=0, description="The target 1-sigma, in at%.")
    reached: bool = Field(description="Every detected element's sigma is at most the target now.")
    reachable: bool = Field(description="False when the spread or bias parts alone exceed the target: "
                                        "acquiring longer does not get there.")
    limiting_element: str | None = Field(default=None, description="The element that needs the most counts.")
    counts_factor: float | None = Field(
        default=None, ge=0, description="Counts needed over counts now (counting sigma falls as 1/sqrt(counts)).")
    sweeps: float | None = Field(default=None, ge=0, description="Sweeps still needed at the current dose per sweep.")
    seconds: float | None = Field(default=None, ge=0, description="Seconds still needed at the current sweep rate.")


class ClusterComposition(_Model):
    label: int = Field(ge=0)
    pixels: int = Field(ge=0, description="Binned pixels assigned to the cluster.")
    elements: dict[str, ElementResult] = Field(description="By element symbol, e.g. Fe.")
    entropy_r: float | None = Field(
        default=None, description="Configurational entropy over `entropy_species`, in units of R.")
    entropy_r_sigma: float | None = Field(default=None, description="1-sigma of entropy_r.")
    core_pixels: int | None = Field(
        default=None, ge=0, description="Binned pixels the composition was measured on (see pixel_level).")
    pixel_level: Literal["core", "interior", "all"] | None = Field(
        default=None, description="core: pixels whose 3x3 neighbourhood is in the cluster; interior: whose four "
                                  "edge neighbours are; all: every pixel of the cluster.")
    time_to_target: TimeToTarget | None = Field(default=None, description="Time to the target uncertainty.")


class Composition(_Document):
    """Quantified composition of every cluster of one workflow's segmentation."""

    kind: Literal["composition"] = "composition"
    workflow: Workflow
    refit: int = Field(ge=0, description="The refit whose clusters were quantified.")
    quantify_s: float = Field(ge=0, description="Wall time of the quantification, in s.")
    method: str = Field(description="How intensities were measured and quantified.")
    kfactor_source: str = Field(description="Where the k-factors came from.")
    kfactors: dict[str, float] = Field(description="Cliff-Lorimer k-factor by X-ray line, e.g. Fe_Ka.")
    xray_lines: list[str] = Field(description="The X-ray lines quantified, HyperSpy style, e.g. Fe_Ka.")
    clusters: list[ClusterComposition]
    intensity_method: Literal["model", "windows"] = Field(
        default="windows", description="Line intensities from exspy's model fit or from background-subtracted windows.")
    kfactors_theoretical: bool = Field(
        default=False, description="True when the k-factors are computed, not measured: treat compositions as such.")
    weighting: Literal["membership", "hard"] = Field(
        default="hard", description="Cluster spectra from membership-weighted pixels or hard masks.")
    elements_source: str = Field(
        default="", description="Where the elements came from: acquisition start, config, or proposed from peaks.")
    entropy_species: list[str] = Field(
        default_factory=list, description="Elements of the sublattice entering entropy_r.")
    absorption_thickness_nm: float | None = Field(
        default=None, description="Film thickness of the absorption correction; None: no correction.")
    fit: dict[str, float | str | list[str] | list[float] | list[list[float]]] = Field(
        default_factory=dict, description="The model fit: elements, range, calibrated resolution and offset.")


class MeanImage(_Document):
    """The acquisition's simultaneous image: the mean of each pixel over the sweeps received.

    Array: ``image`` (<f4, scan rows x columns). A pixel whose row no image has reached yet is 0.
    """

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {"image": ArraySpec(("<f4",), 2)}

    kind: Literal["image"] = "image"
    detector: str = Field(description="Name of the image detector, e.g. HAADF (from the image messages).")
    sweeps: int = Field(ge=0, description="Sweeps whose image (or part of it) was received.")
    pixel_size: float | None = Field(default=None, description="Scan step, in pixel_unit (from the start).")
    pixel_unit: str = Field(default="nm", description="Unit of pixel_size (from the start).")

    @model_validator(mode="after")
    def _arrays_follow_spec(self) -> "MeanImage":
        check_arrays(self.arrays, self.ARRAYS)
        return self


#: Why a region is worth a closer look (protocol/SPEC.md 7.6).
TargetReason = Literal["small_cluster", "rare_cluster", "low_confidence", "boundary", "sigma_above_target",
                       "outlier"]
TARGET_REASONS = ("small_cluster", "rare_cluster", "low_confidence", "boundary", "sigma_above_target", "outlier")

#: A value a plan takes: a number, a string, a flag, a list of numbers, or null.
PlanValue = Union[bool, int, float, str, list[int], list[float], None]


class Plan(_Model):
    """A plan to run, shaped as a bluesky-adaptive suggestion: ``plan_name(*args, **kwargs)``."""

    plan_name: str = Field(description="Name of the plan the controller runs, e.g. edx_spectrum_image.")
    args: list[PlanValue] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, PlanValue] = Field(default_factory=dict, description="Keyword arguments.")


class Target(_Model):
    """One region worth a higher-resolution look, with what it would take to look at it."""

    rank: int = Field(ge=1, description="1 for the best target; targets are listed by rank.")
    score: float = Field(ge=0, le=1, description=(
        "1 - product over the candidates merged into the target of (1 - weight x strength): each candidate "
        "(one reason found by one workflow) has a strength from 0 to 1 and its reason a configured weight."))
    reasons: list[TargetReason] = Field(min_length=1, description="Why the region is interesting.")
    workflows: list[Workflow] = Field(min_length=1, description="The workflows whose maps support the target.")
    clusters: dict[str, list[int]] = Field(
        default_factory=dict, description="By workflow: the cluster ids (labels of its clusters document) involved.")
    box_px: tuple[int, int, int, int] = Field(
        description="(row0, col0, row1, col1) in scan pixels, end-exclusive.")
    box: tuple[float, float, float, float] | None = Field(
        default=None, description="box_px times pixel_size, in pixel_unit; None without a pixel size.")
    centre_offset_m: tuple[float, float] | None = Field(
        default=None, description="(x, y) of the box centre from the scan centre, in m, in the stage frame "
                                  "(scan x along the columns, y against the rows, rotated by scan_rotation_rad); "
                                  "None when the pixel size in metres is unknown.")
    stage_target: tuple[float, float] | None = Field(
        default=None, description="(x, y) stage position of the box centre, in m: stage_position plus "
                                  "centre_offset_m; None without a stage position.")
    sweeps: float | None = Field(default=None, ge=0, description=(
        "Sweeps of the box at dwell_time_s for its clusters' compositions to reach the target sigma; "
        "None when no cluster of it has a time to target."))
    seconds: float | None = Field(default=None, ge=0, description="Acquisition time of those sweeps over the box, s.")
    dwell_time_s: float | None = Field(default=None, gt=0, description="Dwell per pixel and sweep, s.")
    dose_basis: str = Field(default="", description="Where sweeps, seconds and dwell come from, in words.")
    plan: Plan = Field(description="The acquisition to run, as a bluesky-adaptive suggestion.")


class Targets(_Document):
    """After a refit: the regions worth a higher-resolution look, best first, and the scan's geometry."""

    kind: Literal["targets"] = "targets"
    refit: int = Field(ge=0, description="The refit whose maps the targets come from.")
    scan_shape: tuple[int, int] = Field(description="(rows, columns) of the scan, from the start.")
    pixel_size: float | None = Field(default=None, description="Scan step, in pixel_unit (from the start).")
    pixel_unit: str = Field(default="nm", description="Unit of pixel_size (from the start).")
    field_of_view_m: float | None = Field(default=None, description="Horizontal field width, m (from the start).")
    scan_rotation_rad: float | None = Field(default=None, description="Scan rotation, rad (from the start).")
    stage_position: StagePosition | None = Field(default=None, description="The stage (from the start).")
    targets: list[Target] = Field(default_factory=list, description="By rank, best first; may be empty.")


class Advice(_Document):
    """After a refit: whether to stop acquiring, and why."""

    kind: Literal["advice"] = "advice"
    refit: int = Field(ge=0, description="The refit the advice follows.")
    stop: bool = Field(description="True when the acquisition can stop.")
    reason: Literal["converged_and_precise", "budget_exceeded", "target_unreachable", "not_yet"] = Field(
        description="converged_and_precise: every map converged and every sigma reached its target; "
                    "budget_exceeded: the time budget is spent, or the time still needed would exceed it; "
                    "target_unreachable: the maps converged but a sigma cannot reach its target by acquiring "
                    "longer; not_yet: keep acquiring.")
    converged: dict[str, bool] = Field(default_factory=dict, description="By workflow: its map has converged.")
    sigma_reached: bool = Field(description=(
        "Every detected element of every cluster (empty-space clusters aside) has its sigma at most the target."))
    predicted_seconds: float | None = Field(default=None, ge=0, description=(
        "Acquisition time until every sigma reaches its target: the largest over clusters; None when unknown "
        "or unreachable."))
    budget_s: float | None = Field(default=None, gt=0, description="The configured time budget, s; None: none.")
    elapsed_s: float | None = Field(default=None, ge=0, description="Acquisition time so far, s, when known.")
    limiting: str | None = Field(default=None, description="The cluster and element that need the longest.")
    message: str = Field(default="", description="The advice in words.")


ResultDocument = Annotated[Union[Status, Clusters, Composition, MeanImage, Targets, Advice],
                           Field(discriminator="kind")]

NOISE_LABEL = 65535
