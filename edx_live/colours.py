"""The colour of a cluster id, the same on the web page, in the report and on every refit.

A cluster keeps its colour as long as it keeps its id (ids are stable across refits and never
reused). Pure, no plotting library: the viewer and the report both use it.
"""

from __future__ import annotations

#: Cluster id ``k`` is drawn in ``CLUSTER_COLOURS[k % len(CLUSTER_COLOURS)]`` (Category20 without its
#: greys, which an ADF image underneath would swallow).
CLUSTER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                   "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
                   "#dbdb8d", "#9edae5")
#: Pixels left unassigned (noise, label 65535 on the wire): black, a colour no cluster has.
NOISE_COLOUR = "#000000"
NOISE_LABEL = 65535


def cluster_colour(label: int) -> str:
    """The colour of cluster id ``label`` (noise: black)."""
    return NOISE_COLOUR if int(label) in (NOISE_LABEL, -1) else CLUSTER_COLOURS[int(label) % len(CLUSTER_COLOURS)]
