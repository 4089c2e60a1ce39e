"""Cluster spectra to compositions with exspy (Cliff-Lorimer), with counting-statistics uncertainties.

- ``kfactors``: k-factors from the command line or configuration, line names checked against exspy;
- ``lines``: X-ray line names and the lines exspy picks for a set of elements;
- ``signal``: calibrated exspy EDS signals from plain arrays (shared with ``edx_live.export``);
- ``cliff_lorimer``: :func:`quantify_clusters`, the pure quantification step.
"""

from .cliff_lorimer import USER_KFACTORS, Quantification, Windows, quantify_clusters
from .kfactors import KFactorError, parse_kfactors
from .lines import LineError, resolve_lines

__all__ = ["KFactorError", "LineError", "Quantification", "USER_KFACTORS", "Windows", "parse_kfactors",
           "quantify_clusters", "resolve_lines"]
