"""What a session folder says about how it was made: acquisition facts, main settings, software versions.

Each is a small, flat mapping of names to plain values, built at the edge from
the objects the shell holds, so the writers never see the whole settings.
"""

from __future__ import annotations

from importlib import metadata

import edx_live

#: Packages whose versions a report names (distribution name -> how it is shown).
SOFTWARE = {"hyperspy": "hyperspy", "exspy": "exspy", "numpy": "numpy", "scikit-learn": "scikit-learn",
            "umap-learn": "umap-learn", "rosettasciio": "rosettasciio"}


def software_versions() -> dict[str, str]:
    """edx_live's version and the installed versions of the libraries the results depend on."""
    versions = {"edx_live": edx_live.__version__}
    for dist, name in SOFTWARE.items():
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def acquisition_facts(acquisition, elapsed_s: float | None = None, source: str | None = None) -> dict:
    """Facts about an acquisition for a session's report, from the service's acquisition state.

    Parameters
    ----------
    acquisition : edx_live.core.ingest.Acquisition
        Reads ``frames``, ``accumulator.counts``, ``messages``, ``missing``, ``stop_reason``.
    elapsed_s : float, optional
        Seconds from its start to its stop.
    source : str, optional
        Where the counts came from (a replayed file, the input endpoint).

    Returns
    -------
    dict
        ``frames``, ``counts``, ``messages``, ``missing_messages``, ``stop_reason``, ``elapsed_s``
        and ``source``; values that are not known are None.
    """
    return {"frames": acquisition.frames, "counts": int(acquisition.accumulator.counts),
            "messages": acquisition.messages, "missing_messages": acquisition.missing,
            "stop_reason": acquisition.stop_reason,
            "elapsed_s": None if elapsed_s is None else round(float(elapsed_s), 3), "source": source}


def main_settings(settings) -> dict[str, str]:
    """The settings a reader of a report needs to judge its numbers, as short text.

    Parameters
    ----------
    settings : edx_live.config.Settings
    """
    a, r, q = settings.accumulate, settings.refit, settings.quantify
    p, u = settings.pca_gmm, settings.umap_hdbscan
    energy = f"{_or(a.energy_min_kev, 'start')}..{_or(a.energy_max_kev, 'end')} keV, rebin {a.energy_rebin}"
    return {
        "spatial bin": f"{a.spatial_bin} x {a.spatial_bin}",
        "energy": energy,
        "workflows": ", ".join(r.workflows),
        "pca-gmm": f"components {_or(p.n_components, 'scree')}, clusters {_or(p.n_clusters, 'auto')}, "
                   f"scaling {p.scaling}",
        "umap-hdbscan": f"min cluster size {_or(u.min_cluster_size, 'auto')}, scaling {u.scaling}",
        "intensities": q.intensities,
        "weighting": q.weighting,
        "measured on": f"cluster {q.cluster_pixels} pixels",
        "uncertainty": f"{q.replicas} replicas, {q.bootstrap} bootstrap",
        "detection": f"{q.detection_sigma:g} sigma",
        "absorption": "none" if q.absorption_thickness_nm is None else f"{q.absorption_thickness_nm:g} nm film",
    }


def _or(value, default: str):
    return default if value is None else value
