"""One configuration object for the service.

Precedence, lowest first: defaults < environment (``EDX_LIVE_*``, nested with
``__``, e.g. ``EDX_LIVE_REFIT__INTERVAL_S=2``) < configuration file (TOML) <
command line. Unknown keys and invalid values are errors at start-up.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from edx_protocol import TARGET_REASONS
from edx_protocol.endpoints import DEFAULT_CONTROL, DEFAULT_INPUT, DEFAULT_OUTPUT
from edx_protocol.security import Security, SecurityError, load_client_keys, load_server_keys
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edx_live.core.ingest import IngestOptions
from edx_live.quantify import QuantifyOptions
from edx_live.quantify.entropy import ANIONS
from edx_live.quantify.setup import SetupOptions
from edx_live.quantify.kfactors import parse_kfactors, read_kfactor_table
from edx_live.suggest import AdviceOptions, TargetOptions
from edx_live.suggest.targets import DEFAULT_WEIGHTS


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says what to change."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSettings(_Section):
    """Where frames come from."""

    address: str = Field(DEFAULT_INPUT, description="ZeroMQ endpoint; port * = any free port.")
    socket: Literal["pull", "sub"] = Field("pull", description="PULL (no loss, producer PUSHes) or SUB.")
    bind: bool | None = Field(None, description="Bind instead of connect; default: PULL binds, SUB connects.")
    high_water_mark: int = Field(100, ge=1, description=(
        "Messages queued before the socket pushes back (PULL) or drops (SUB); "
        "with max_message_bytes it bounds the queue's memory."))
    max_message_bytes: int = Field(IngestOptions.max_message_bytes, ge=2**16, description=(
        "Largest message accepted, in bytes: ZeroMQ drops a larger frame unread and closes its "
        "connection (ZMQ_MAXMSGSIZE); a larger multipart message is refused (too_large)."))
    max_seq_gap: int = Field(IngestOptions.max_seq_gap, ge=1, description=(
        "A message further ahead of the next expected seq is refused (seq_out_of_window)."))
    producer_timeout_s: float | None = Field(300.0, gt=0, description=(
        "An acquisition that receives nothing for this long is closed as if stopped (stop reason "
        "producer_timeout): finally refitted and exported, saying so. None = wait for its stop forever."))

    @property
    def binds(self) -> bool:
        return self.socket == "pull" if self.bind is None else self.bind


class OutputSettings(_Section):
    """Where results go."""

    address: str = Field(DEFAULT_OUTPUT, description="PUB endpoint the service binds.")
    status_interval_s: float = Field(1.0, ge=0.01, description="Seconds between status documents.")
    sessions_dir: Path | None = Field(
        Path("sessions"), description="A session folder per finished acquisition is written under it "
                                       "(spectrum image, maps, compositions, report.png); None = none.")


class ControlSettings(_Section):
    """The REP socket commands are answered on (``edx-live ctl``, protocol/SPEC.md section 11)."""

    address: str | None = Field(DEFAULT_CONTROL, description="REP endpoint the service binds; None = no control.")


class RecordSettings(_Section):
    """Recordings of every message received (protocol/SPEC.md section 12), one file per acquisition."""

    dir: Path | None = Field(None, description="Folder of the recordings; None = nothing is recorded.")
    max_bytes_per_acquisition: int | None = Field(
        64 * 2**30, ge=2**20, description="An acquisition's recording stops at this size (logged); None = no limit.")
    max_total_bytes: int | None = Field(
        512 * 2**30, ge=2**20, description="Recording stops while the folder's recordings reach this size; "
                                           "None = no limit.")
    fsync: bool = Field(False, description="Also fsync every message (survives a power cut, not only a crash; "
                                           "slower).")
    recover: bool = Field(True, description=(
        "At start-up, resume the acquisitions a killed service left unfinished in dir (their recording "
        "and checkpoint), then accept the rest of their stream."))


class AccumulateSettings(_Section):
    """Energy selection while accumulating, and spatial binning for the workflows."""

    energy_min_kev: float | None = Field(None, description="Drop channels below (None = keep all).")
    energy_max_kev: float | None = Field(None, description="Drop channels above (None = keep all).")
    energy_rebin: int = Field(1, ge=1, le=64, description="Detector channels summed per channel.")
    spatial_bin: int = Field(2, ge=1, le=16, description="Pixels per side summed before segmentation.")

    max_cube_bytes: int = Field(IngestOptions.max_cube_bytes, ge=2**20, description=(
        "Largest spectrum image (pixels x kept channels x 4 bytes) an acquisition may open; "
        "a larger start is refused (acquisition_too_large)."))
    max_open_acquisitions: int = Field(IngestOptions.max_open_acquisitions, ge=1, le=64, description=(
        "Acquisitions held at once (acquiring, or awaiting their final refit); "
        "a start beyond that is refused (too_many_acquisitions)."))


class RefitSettings(_Section):
    """When the workflows are refitted."""

    interval_s: float = Field(5.0, gt=0, description="Seconds between refits while counts arrive.")
    every_frames: int | None = Field(None, ge=1, description="Also refit after this many new sweeps.")
    workflows: list[Literal["pca-gmm", "umap-hdbscan"]] = Field(
        default_factory=lambda: ["pca-gmm", "umap-hdbscan"], min_length=1)
    min_counts: int = Field(1000, ge=0, description="Counts needed before the first refit.")
    parallel: Literal["auto", "on", "off"] = Field("auto", description=(
        "on: with both workflows, umap-hdbscan runs in a worker process beside pca-gmm; auto: on with 2 or "
        "more cores once a refit has 16,384 binned pixels or more; off: one after the other in the refit thread."))


Scaling = Literal["robust", "poisson", "none"]

# Upper bounds of what a refit may be asked to do (also over the control socket): each well above any
# useful value, each small enough that one refit stays seconds, not hours or all the memory.
MAX_COMPONENTS = 64      # PCA components / embedding dimensions
MAX_CLUSTERS = 32        # mixture components tried
MAX_REBIN = 256          # channels summed
MAX_FIT_SAMPLES = 2**20  # pixels fitted
MAX_NEIGHBORS = 500      # UMAP neighbours
MAX_RESAMPLES = 4096     # Poisson replicas, bootstrap samples


#: Upper edge of the channels a workflow fits: a number (keV), "auto" or "all".
EnergyMax = Annotated[float, Field(gt=0)] | Literal["auto", "all"]
ENERGY_MAX_HELP = ("Channels fitted up to this energy (keV); auto = highest line of the elements "
                   "plus 0.5 keV (all channels when no element is known); all = no cut.")


class PcaGmmSettings(_Section):
    n_components: int | None = Field(None, ge=1, le=MAX_COMPONENTS,
                                     description="PCA components; None = scree change point.")
    n_clusters: int | None = Field(None, ge=1, le=MAX_CLUSTERS, description="Mixture components; None = lowest ICL.")
    scaling: Scaling = Field("poisson", description="Per-channel scaling before PCA (the study: robust).")
    energy_rebin: int = Field(8, ge=1, le=MAX_REBIN,
                              description="Channels summed before fitting (8 x 20 eV ~ resolution).")
    max_components: int = Field(20, ge=2, le=MAX_COMPONENTS, description="Most PCA components the scree looks at.")
    max_clusters: int = Field(8, ge=2, le=MAX_CLUSTERS, description="Most mixture components the ICL tries.")
    covariance_type: Literal["tied", "full", "diag", "spherical"] = Field(
        "tied", description="Mixture covariance; tied = one noise model for every phase.")
    merge_mixed: bool = Field(True, description="Merge mixed-pixel and thickness components (auto count only).")
    max_fit_samples: int = Field(8192, ge=100, le=MAX_FIT_SAMPLES,
                                 description="Pixels used to choose the cluster count.")
    energy_max_kev: EnergyMax = Field("auto", description=ENERGY_MAX_HELP)
    random_state: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the fits (numpy's range).")


class UmapHdbscanSettings(_Section):
    n_components: int = Field(4, ge=2, le=MAX_COMPONENTS, description="Dimensions of the UMAP embedding.")
    n_neighbors: int = Field(15, ge=2, le=MAX_NEIGHBORS, description="Neighbours UMAP's graph joins per pixel.")
    min_cluster_size: int | None = Field(
        None, ge=2, description="Pixels (binned) the smallest feature covers; None = 0.5 % of the pixels.")
    scaling: Scaling = Field("poisson", description="Per-channel scaling (the study: robust; see README).")
    energy_rebin: int = Field(8, ge=1, le=MAX_REBIN,
                              description="Channels summed before fitting (8 x 20 eV ~ resolution).")
    pca_components: int | None = Field(None, ge=0, le=MAX_COMPONENTS,
                                       description="PCA before UMAP; None = scree knee, 0 = none.")
    energy_max_kev: EnergyMax = Field("all", description=ENERGY_MAX_HELP + " Default all: see README.")
    max_fit_samples: int = Field(16384, ge=100, le=MAX_FIT_SAMPLES,
                                 description="Larger scans: fit a sample, place the rest.")
    warm_epochs: int | Literal["auto"] = Field("auto", description=(
        "UMAP epochs of a warm-started refit; auto = 60, then fewer once the map holds still."))
    random_state: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the fits (numpy's range).")


class QuantifySettings(_Section):
    """How cluster spectra become compositions (README: Quantification)."""

    kfactors: dict[str, float] = Field(default_factory=dict, description="Cliff-Lorimer k-factor per line.")
    kfactor_table: Path | None = Field(
        None, description="CSV of LINE,VALUE rows; kfactors given here or on the command line win over it.")
    elements: list[str] = Field(default_factory=list, description="Overrides the acquisition's elements.")
    xray_lines: list[str] = Field(default_factory=list, description="Overrides the acquisition's lines.")
    propose_elements: bool = Field(
        True, description="With no elements named anywhere, propose them from the total spectrum's peaks.")
    fit_only_elements: list[str] | Literal["auto"] = Field(
        "auto", description="Modelled but not quantified (C film, Cu grid, Si); auto = peaks of the total spectrum.")
    intensities: Literal["model", "windows"] = Field("model", description="exspy model fit or windows.")
    background_order: int = Field(6, ge=0, le=12, description="Polynomial background of the model.")
    fit_range_kev: tuple[float, float] | None = Field(
        None, description="Energy range of the model fit; None = 0.2 keV to 1 keV above the highest line.")
    calibrate: list[Literal["axis", "resolution", "offset"]] = Field(
        default_factory=lambda: ["axis", "resolution"],
        description="Calibrations on the total spectrum: energy axis offset and gain from its peaks, detector "
                    "resolution, model energy offset.")
    recalibrate_growth: float = Field(2.0, gt=1, description="Recalibrate when the counts grew this much.")
    replicas: int = Field(64, ge=0, le=MAX_RESAMPLES,
                          description="Poisson replicas for the counting uncertainty (0 = none).")
    bootstrap: int = Field(64, ge=0, le=MAX_RESAMPLES, description="Pixel-bootstrap samples for the spread (0 = none).")
    weighting: Literal["membership", "hard"] = Field(
        "membership", description="Weight pixels by their confidence in the cluster, or hard masks.")
    absorption_thickness_nm: float | None = Field(
        None, gt=0, description="Absorption correction for a film this thick (nm); None = no correction.")
    sublattice: list[str] = Field(default_factory=list, description="Entropy species; empty = all but excluded.")
    sublattice_exclude: list[str] = Field(
        default_factory=lambda: list(ANIONS), description="Left out of the entropy (anions).")
    cluster_pixels: Literal["core", "all"] = Field(
        "core", description="Measure each cluster on its core, away from boundaries (with the bias left in the "
                            "sigma), or on all its pixels.")
    detection_sigma: float = Field(
        3.0, gt=0, le=10, description="A line is detected above this many counting sigma of its intensity.")
    target_sigma_at: float = Field(
        1.0, gt=0, le=50, description="The 1-sigma (at%) each detected element should reach: the time to it is "
                                      "published with each composition.")

    @field_validator("kfactors", mode="before")
    @classmethod
    def _known_lines(cls, value) -> dict[str, float]:
        """Accept a table or ``LINE=VALUE`` strings; check every line exists in exspy's database."""
        return parse_kfactors(value)

    @field_validator("kfactor_table")
    @classmethod
    def _readable_table(cls, value: Path | None) -> Path | None:
        """Read the table at start-up, so a bad path or row stops the service before it binds."""
        if value is not None:
            read_kfactor_table(value)
        return value

    @field_validator("fit_range_kev")
    @classmethod
    def _ordered(cls, value):
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError(f"fit_range_kev must be [low, high] with 0 <= low < high keV, got {list(value)}")
        return value

    def options(self) -> QuantifyOptions:
        """The quantifier's own options (what measures and quantifies the cluster spectra)."""
        return QuantifyOptions(intensities=self.intensities, background_order=self.background_order,
                               fit_range_kev=self.fit_range_kev, calibrate=tuple(self.calibrate),
                               recalibrate_growth=self.recalibrate_growth, replicas=self.replicas,
                               bootstrap=self.bootstrap, weighting=self.weighting,
                               thickness_nm=self.absorption_thickness_nm, sublattice=tuple(self.sublattice),
                               sublattice_exclude=tuple(self.sublattice_exclude), cluster_pixels=self.cluster_pixels,
                               detection_sigma=self.detection_sigma, target_sigma=self.target_sigma_at)

    def setup_options(self) -> SetupOptions:
        """What names the acquisition's lines (:func:`edx_live.quantify.setup.acquisition_setup`)."""
        fit_only = self.fit_only_elements if self.fit_only_elements == "auto" else tuple(self.fit_only_elements)
        return SetupOptions(elements=tuple(self.elements), xray_lines=tuple(self.xray_lines),
                            propose_elements=self.propose_elements, fit_only_elements=fit_only,
                            calibrate_axis="axis" in self.calibrate)

    def user_kfactors(self) -> dict[str, float]:
        """The table's k-factors overridden by the ones given one by one."""
        table = read_kfactor_table(self.kfactor_table) if self.kfactor_table else {}
        return {**table, **self.kfactors}


class TrackingSettings(_Section):
    """Stable cluster ids across refits and the ``converged`` rule (protocol/SPEC.md 7.3)."""

    pixel_weight: float = Field(0.5, ge=0, le=1, description="Weight of pixel overlap against spectrum shape.")
    min_similarity: float = Field(0.5, ge=0, le=1, description="Pairs less similar are never matched.")
    ari_threshold: float = Field(0.95, ge=0, le=1, description="Least label agreement with the previous refit.")
    spectrum_threshold: float = Field(0.05, ge=0, le=1, description="Largest Hellinger change of a spectrum.")
    patience: int = Field(2, ge=1, le=1000, description="Consecutive refits within both thresholds before converged.")


class TargetSettings(_Section):
    """Follow-up targets published after each refit (README: Follow-up targets and stop advice)."""

    enabled: bool = Field(True, description="Publish a targets document after each refit.")
    max_targets: int = Field(8, ge=0, le=64, description="Targets published at most.")
    rare_fraction: float = Field(0.05, gt=0, lt=1, description="A cluster covering less of the sample is rare.")
    small_fraction: float = Field(0.02, gt=0, lt=1, description="A connected region covering at most this share "
                                                                  "of the sample is small.")
    min_region_px: int = Field(2, ge=1, le=1000, description="Binned pixels a region needs; fewer is speckle.")
    confidence_threshold: float = Field(0.5, ge=0, le=1, description="Pixels less confident are low-confidence.")
    outlier_threshold: float = Field(0.8, ge=0, le=1, description="Pixels with a GLOSH score at least this are "
                                                                   "outliers.")
    empty_fraction: float = Field(0.1, ge=0, lt=1, description=(
        "A cluster with fewer counts per pixel than this share of the median is empty space (vacuum, resin): "
        "never a target."))
    boundary_length_px: int = Field(6, ge=1, le=1000, description="Binned pixels on each side at which a boundary "
                                                                   "stretch counts fully.")
    max_box_fraction: float = Field(0.25, gt=0, le=1, description="A box spans at most this share of a scan side.")
    boundary_box_fraction: float = Field(0.125, gt=0, le=1, description="The same cap for boundary windows.")
    min_box_px: int = Field(8, ge=1, le=65535, description="Smallest box side, in scan pixels.")
    margin_px: int = Field(2, ge=0, le=1000, description="Scan pixels added around each region.")
    merge_overlap: float = Field(0.5, gt=0, le=1, description="Candidates merge when their intersection covers "
                                                               "this share of the smaller box.")
    weights: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS), description="Weight of each reason in the score (0: off).")

    @field_validator("weights")
    @classmethod
    def _known_reasons(cls, value: dict) -> dict:
        unknown = set(value) - set(TARGET_REASONS)
        if unknown:
            raise ValueError(f"unknown reasons {sorted(unknown)}; known: {', '.join(TARGET_REASONS)}")
        return {**DEFAULT_WEIGHTS, **value}

    def options(self) -> TargetOptions:
        return TargetOptions(**self.model_dump(exclude={"enabled"}))


class AdviceSettings(_Section):
    """When the service says the acquisition can stop (README: Follow-up targets and stop advice)."""

    enabled: bool = Field(True, description="Publish an advice document after each refit.")
    budget_s: float | None = Field(None, gt=0, description=(
        "Acquisition time allowed, in s: stop when spent, or when the maps converged and the predicted time to "
        "every target sigma would overrun it; None = no budget."))
    require_sigma: bool = Field(True, description="Also wait for every composition to reach "
                                                  "quantify.target_sigma_at (false: convergence alone).")
    empty_fraction: float = Field(0.1, ge=0, lt=1, description="As in [targets]: empty space does not hold the "
                                                                "stop back.")

    def options(self) -> AdviceOptions:
        return AdviceOptions(**self.model_dump(exclude={"enabled"}))


class SecuritySettings(_Section):
    """CurveZMQ encryption and client keys (README: Security); off by default.

    A program's sockets that bind (the service's input, results and control) are CURVE servers
    and admit only the clients whose public key is in ``authorized_keys``; the sockets it
    connects (the viewer, ``edx-live ctl``, an input SUB) are CURVE clients of ``server_public_key``.
    Keys and folders come from ``edx-live keys DIR``; they are read and checked at start-up.
    """

    curve: bool = Field(False, description=(
        "Encrypt every socket with CurveZMQ and admit only authorised clients; false = plain ZeroMQ."))
    server_secret_key: Path | None = Field(None, description=(
        "This service's secret key file (server.key_secret of edx-live keys), for the sockets it binds."))
    authorized_keys: Path | None = Field(None, description=(
        "Folder of the public key files (NAME.key) of the clients admitted: producers, viewers, edx-live ctl."))
    reload_s: float | None = Field(2.0, gt=0, le=3600, description=(
        "Seconds between looks at authorized_keys: a key file added or removed counts for new connections; "
        "None = read at start-up only."))
    client_secret_key: Path | None = Field(None, description=(
        "This program's client secret key file (NAME.key_secret), for the sockets it connects "
        "(the viewer, edx-live ctl, an input SUB that connects)."))
    server_public_key: Path | None = Field(None, description=(
        "Public key file (server.key) of the server those sockets connect to."))

    @model_validator(mode="after")
    def _pairs(self) -> "SecuritySettings":
        for one, other in (("server_secret_key", "authorized_keys"), ("client_secret_key", "server_public_key")):
            if (getattr(self, one) is None) != (getattr(self, other) is None):
                raise ValueError(f"{one} and {other} go together: give both or neither "
                                 "(edx-live keys DIR writes both)")
        if self.curve and self.server_secret_key is None and self.client_secret_key is None:
            raise ValueError("curve = true needs keys: server_secret_key and authorized_keys for a service, "
                             "client_secret_key and server_public_key for a client; create them with "
                             "`edx-live keys DIR --client NAME`")
        return self

    def load(self, side: Literal["server", "client"] | None = None):
        """The keys, read and checked (an ``edx_protocol.security.Security``), or None when curve is off.

        ``side`` names the keys this program cannot do without; ConfigError says what is missing or wrong.
        """
        if not self.curve:
            return None
        needed = {"server": ("server_secret_key", "authorized_keys"),
                  "client": ("client_secret_key", "server_public_key")}.get(side, ())
        if needed and getattr(self, needed[0]) is None:
            raise ConfigError(f"[security] curve = true, and this program needs {' and '.join(needed)}: set them "
                              "in the configuration file (create the files with `edx-live keys DIR --client NAME`)")
        try:
            server = (load_server_keys(self.server_secret_key, self.authorized_keys, self.reload_s)
                      if self.server_secret_key is not None else None)
            client = (load_client_keys(self.client_secret_key, self.server_public_key)
                      if self.client_secret_key is not None else None)
        except SecurityError as exc:
            raise ConfigError(f"[security]: {exc}") from None
        return Security(server=server, client=client)


class ScaleSettings(_Section):
    """Many inputs of ``edx-live process`` as Dask tasks (README: Many sessions on a Dask cluster).

    Without ``scheduler`` a local cluster is started for the run, bound to 127.0.0.1 only.
    """

    scheduler: str | None = Field(None, description=(
        "Address of a running Dask scheduler (tcp://host:8786, tls://host:8786); None = a local cluster "
        "on 127.0.0.1 for the run."))
    workers: int | None = Field(None, ge=1, le=1024, description=(
        "Worker processes of the local cluster; None = the cores this process may use."))
    threads_per_worker: int = Field(1, ge=1, le=256, description=(
        "Threads of each local worker (tasks run at once in it); each input's numerical kernels use as many."))
    dashboard: str | None = Field(None, description=(
        "Address of the local cluster's dashboard, e.g. 127.0.0.1:8787; None = no dashboard."))
    tls_ca_file: Path | None = Field(None, description=(
        "CA certificate the scheduler's TLS certificate is checked against (a tls:// scheduler)."))
    tls_cert: Path | None = Field(None, description="This client's TLS certificate (PEM) for a tls:// scheduler.")
    tls_key: Path | None = Field(None, description=(
        "This client's TLS private key (PEM); None = the key is in tls_cert."))

    @model_validator(mode="after")
    def _tls_needs_scheduler(self) -> "ScaleSettings":
        if self.scheduler is None and (self.tls_ca_file or self.tls_cert or self.tls_key):
            raise ValueError("tls_ca_file, tls_cert and tls_key are for a remote scheduler: set scheduler "
                             "(tls://host:port) too; the local cluster stays on 127.0.0.1")
        return self


class Settings(BaseSettings):
    """Everything the service can be told; see each section."""

    model_config = SettingsConfigDict(env_prefix="EDX_LIVE_", env_nested_delimiter="__", extra="forbid")

    input: InputSettings = Field(default_factory=InputSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    accumulate: AccumulateSettings = Field(default_factory=AccumulateSettings)
    refit: RefitSettings = Field(default_factory=RefitSettings)
    pca_gmm: PcaGmmSettings = Field(default_factory=PcaGmmSettings)
    umap_hdbscan: UmapHdbscanSettings = Field(default_factory=UmapHdbscanSettings)
    quantify: QuantifySettings = Field(default_factory=QuantifySettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    targets: TargetSettings = Field(default_factory=TargetSettings)
    advice: AdviceSettings = Field(default_factory=AdviceSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    record: RecordSettings = Field(default_factory=RecordSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    scale: ScaleSettings = Field(default_factory=ScaleSettings)
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def ingest_options(settings: Settings) -> IngestOptions:
    """The core's ingest options from the ``[accumulate]`` and ``[input]`` sections."""
    a, i = settings.accumulate, settings.input
    return IngestOptions(energy_min_kev=a.energy_min_kev, energy_max_kev=a.energy_max_kev,
                         energy_rebin=a.energy_rebin, max_cube_bytes=a.max_cube_bytes,
                         max_open_acquisitions=a.max_open_acquisitions, max_seq_gap=i.max_seq_gap,
                         max_message_bytes=i.max_message_bytes)


#: Settings a running service takes by ``set`` (``edx-live ctl set``); the rest need a restart.
LIVE_SECTIONS = ("refit", "pca_gmm", "umap_hdbscan", "quantify", "tracking", "targets", "advice")
LIVE_KEYS = ("output.status_interval_s", "accumulate.spatial_bin", "log_level")


def changed_settings(settings: Settings, values: dict[str, Any]) -> Settings:
    """``settings`` with ``values`` (by dotted name) applied and validated; ConfigError says what is wrong.

    Every value is checked with the settings' own types and ranges; all apply, or none.
    """
    tree = settings.model_dump()
    for name, value in values.items():
        section, _, key = name.partition(".")
        if section not in LIVE_SECTIONS and name not in LIVE_KEYS:
            known = section in tree and (not key or isinstance(tree[section], dict) and key in tree[section])
            why = "needs a restart (change the configuration file)" if known else "is not a setting"
            raise ConfigError(f"{name} {why}; a running service takes {', '.join(s + '.*' for s in LIVE_SECTIONS)}"
                              f", {', '.join(LIVE_KEYS)}")
        if not key or key not in tree[section]:
            raise ConfigError(f"{name} is not a setting; {section} has {', '.join(tree[section])}")
        tree[section][key] = value
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                                    for e in exc.errors(include_url=False))) from None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML configuration file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist; pass an existing TOML file to --config "
                          f"(deploy/edx-live.toml is an example)")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None


def load_settings(config_file: str | Path | None = None, overrides: dict | None = None) -> Settings:
    """Build the settings: defaults < environment < ``config_file`` < ``overrides`` (command line)."""
    values = read_config_file(config_file) if config_file else {}
    values = _merge(values, overrides or {})
    try:
        return Settings(**values)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                 for e in exc.errors(include_url=False)]
        source = f" in {config_file}" if config_file else ""
        raise ConfigError("invalid configuration" + source + ":\n" + "\n".join(lines) +
                          "\nsee the configuration reference in README.md") from None
