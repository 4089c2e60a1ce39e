"""Cluster spectra to compositions with exspy: model-fitted or window intensities, Cliff-Lorimer, uncertainties.

- ``lines``, ``kfactors``: X-ray line names and k-factors (command line, configuration, CSV table), checked
  against exspy's database; ``theory``: theoretical k-factors from xraylib, labelled as such;
- ``propose``: elements proposed from the peaks of a total spectrum;
- ``signal``: calibrated exspy EDS signals from plain arrays (shared with ``edx_live.export``);
- ``model``: exspy's EDS model as a linear projection from counts to fitted line areas;
- ``samples``: membership-weighted cluster spectra, counting replicas and pixel-bootstrap samples;
- ``cliff_lorimer``: exspy's window intensities and Cliff-Lorimer (with absorption correction);
- ``entropy``: configurational entropy in units of R;
- ``composition``: :class:`ClusterQuantifier`, the step a refit runs, and :func:`quantify_spectra`;
- ``setup``: what an acquisition quantifies and where its elements and k-factors came from.
"""

from .cliff_lorimer import Geometry, Windows
from .composition import ClusterQuantifier, Quantification, QuantifyOptions, Setup, quantify_spectra
from .kfactors import USER_KFACTORS, KFactorError, parse_kfactors, read_kfactor_table
from .lines import LineError, resolve_lines
from .setup import SetupError, acquisition_setup, quantify_clusters

__all__ = ["ClusterQuantifier", "Geometry", "KFactorError", "LineError", "Quantification", "QuantifyOptions",
           "Setup", "SetupError", "USER_KFACTORS", "Windows", "acquisition_setup", "parse_kfactors",
           "quantify_clusters", "quantify_spectra", "read_kfactor_table", "resolve_lines"]
