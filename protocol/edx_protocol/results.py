"""Documents the service publishes: status, cluster maps, compositions.

Each is sent on the service's PUB socket as ``[topic, header, *buffers]``; the
topic strings are in ``TOPICS``. Subscribe to a prefix (``b"clusters/"``) to
receive one kind for every workflow.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .acquisition import AcquisitionId, ArrayDescriptor, _Model
from .version import PROTOCOL_VERSION

WORKFLOWS = ("pca-gmm", "umap-hdbscan")
Workflow = Literal["pca-gmm", "umap-hdbscan"]

TOPICS = {
    "status": "status",
    "clusters": "clusters/{workflow}",
    "composition": "composition/{workflow}",
}


def topic_for(kind: str, workflow: str | None = None) -> bytes:
    """ZeroMQ topic of a published document kind (``status``, ``clusters``, ``composition``)."""
    return TOPICS[kind].format(workflow=workflow).encode()


class _Document(_Model):
    protocol: Literal[1] = PROTOCOL_VERSION
    acquisition_id: AcquisitionId | None
    seq: int = Field(ge=0, description="Counter of documents on this topic since the service started.")
    frames: int = Field(ge=0, description="Sweeps completed so far in this acquisition.")
    counts: int = Field(ge=0, description="X-ray counts accumulated so far.")
    arrays: list[ArrayDescriptor] = Field(default_factory=list)


class Gaps(_Model):
    count: int = Field(ge=0, description="Messages missing from the sequence so far.")
    missing: list[tuple[int, int]] = Field(
        default_factory=list, description="Up to 100 most recent missing ranges [first, last] of seq.")


class Status(_Document):
    """Ingest state, sent at a fixed interval and on every start/stop."""

    kind: Literal["status"] = "status"
    state: Literal["idle", "acquiring", "stopped"]
    messages: int = Field(ge=0, description="Messages accepted for this acquisition.")
    rejected: dict[str, int] = Field(default_factory=dict, description="Dropped messages by reason.")
    gaps: Gaps = Field(default_factory=Gaps)
    refits: int = Field(ge=0)
    last_refit_s: float | None = None
    scan_shape: tuple[int, int] | None = None
    expected_frames: int | None = None


class ClusterInfo(_Model):
    label: int = Field(ge=0)
    pixels: int = Field(ge=0, description="Binned pixels assigned to the cluster.")
    counts: int = Field(ge=0, description="X-ray counts in the cluster-sum spectrum.")


class Clusters(_Document):
    """One workflow's segmentation.

    Arrays: ``labels`` (<u2, binned rows x binned columns; 65535 = noise) and
    ``spectra`` (<u8, n_clusters x channels), the cluster-sum spectra in label order.
    """

    kind: Literal["clusters"] = "clusters"
    workflow: Workflow
    refit: int = Field(ge=0, description="Index of this refit within the acquisition.")
    refit_s: float = Field(ge=0, description="Wall time of the segmentation.")
    bin_factor: int = Field(ge=1)
    energy_offset_kev: float
    energy_scale_kev: float
    clusters: list[ClusterInfo]
    noise_pixels: int = Field(ge=0, description="Binned pixels left unassigned (HDBSCAN noise).")
    choices: dict[str, float | int | str | list[float]] = Field(
        default_factory=dict, description="What the workflow chose from the data and why.")


class ElementResult(_Model):
    atomic_percent: float
    atomic_percent_sigma: float | None = Field(description="1-sigma uncertainty, None when unknown.")
    intensity: float


class ClusterComposition(_Model):
    label: int = Field(ge=0)
    pixels: int = Field(ge=0)
    elements: dict[str, ElementResult]


class Composition(_Document):
    """Quantified composition of every cluster of one workflow's segmentation."""

    kind: Literal["composition"] = "composition"
    workflow: Workflow
    refit: int = Field(ge=0)
    quantify_s: float = Field(ge=0)
    method: str = Field(description="How intensities were measured and quantified.")
    kfactor_source: str = Field(description="Where the k-factors came from.")
    kfactors: dict[str, float]
    xray_lines: list[str]
    clusters: list[ClusterComposition]


ResultDocument = Annotated[Union[Status, Clusters, Composition], Field(discriminator="kind")]

NOISE_LABEL = 65535
