"""Which clusters are phases: one whose counts cannot tell it from its nearest cluster is not, nor is a speck.

A workflow's clusters are where its model found structure; a phase is a region
whose spectrum differs from the others by more than its counts' noise, over
enough pixels to be more than a speck. :func:`settle_phases` applies that rule
to the clusters of one refit, from their counts:

1. Each cluster's spectrum (channels above ``energy_min_kev``, the zero-energy
   noise peak being no chemistry) is summed into bins about the detector
   resolution wide (``bin_kev``), where a line is one or two bins.
2. From the cluster with the fewest counts up, it is compared with its nearest
   cluster (smallest Hellinger distance between the binned spectrum shapes) by a
   G-test of homogeneity: the 2 x bins table of the two summed spectra,
   ``G = 2 sum O ln(O / E)``, chi-square with ``bins - 1`` degrees of freedom
   (Poisson counts of the same shape are multinomial given their totals). Bins
   where either spectrum expects fewer than ``min_expected`` counts are pooled
   into one, so that the chi-square law holds.
3. When the test does not reject the same shape (``p >= p_value``), the cluster
   is merged into its nearest: its counts cannot say it is something else (a
   cluster of a few pixels with a few counts, a piece of a phase cut off by
   thickness, which leaves the shape alone).
4. The G-test cannot see a cut along the noise: a workflow that split one phase
   in two chose the pixels by the very counts the test then sums, so the two
   halves' sums differ by more than chance (the halves of a synthetic resin at
   a few counts per pixel differ at p = 1e-56). The pixels tell: projected on
   the direction that separates the two clusters' spectrum shapes (each bin
   weighted by 1 / the pair's mean shape, the linear discriminant of multinomial
   counts), or by their brightness (log counts: a resin at two counts per pixel
   has no shape to speak of), the two clusters' pixels are ``separation`` pooled
   standard deviations apart. One population split in two at any threshold
   gives at most about 2.7 (a normal split at its median: 1.35 / 0.59); a
   matrix cut from its rim of faint admixture near grains (UMAP at a quarter of
   the synthetic sulfide's dose) gave 4.8 to 5.0; phases, and a small grain's
   cluster with its mixed rim, gave 5.6 to 21. Below ``min_separation`` (5: two
   normal populations that far apart overlap by 0.6 % of each at their midpoint)
   the cluster is merged into its nearest: its pixels cannot be told from the
   other's, whatever their sums say.
5. A cluster told apart that is smaller than ``min_pixels`` binned pixels is
   unassigned (noise): distinct, but too small to be a phase (a lone hot pixel;
   the 15, 5 and 1 binned pixels the mixture gave the sparse JEOL file).

A real region whose spectrum differs, even an artefact such as the first scan
lines of the FePt demo (31 binned pixels, G = 1107 on 74 degrees of freedom
against the support), stays a cluster of its own.

Pure code: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from .preprocess import energy_window, rebin_channels
from .result import INTO_KEY
from .tracking import hellinger_matrix

#: Fewest binned pixels a feature of interest covers: one FePt particle core of the bundled
#: core/shell data (4-5 binned pixels across). Also UMAP + HDBSCAN's smallest cluster.
MIN_CLUSTER_PIXELS = 20

#: The rule in words, for a result's ``choices``.
RULE = ("a cluster whose summed spectrum (binned to ~detector resolution) a G-test of homogeneity cannot "
        "tell from its nearest cluster's (p >= {p_value:g}), or whose pixels lie less than {min_separation:g} "
        "pooled standard deviations from its nearest's along the direction between their shapes, is merged "
        "into it, smallest first; one still below {min_pixels} binned pixels is unassigned")


@dataclass(frozen=True)
class PhaseRule:
    """When a cluster is a phase (see the module docstring).

    Attributes
    ----------
    min_pixels : int
        Fewest binned pixels a phase covers; a distinct cluster below it is unassigned.
    p_value : float
        A cluster is merged into its nearest unless the G-test's p-value is below this.
    bin_kev : float
        Width of the bins the spectra are compared in, about the detector resolution.
    energy_min_kev : float
        Channels below this energy are left out (the zero-energy noise peak).
    min_expected : float
        Bins where either spectrum expects fewer counts are pooled into one.
    min_separation : float
        A cluster whose pixels lie fewer pooled standard deviations from its nearest's
        (:func:`separation`) is merged into it.
    """

    min_pixels: int = MIN_CLUSTER_PIXELS
    p_value: float = 1e-3
    bin_kev: float = 0.15
    energy_min_kev: float = 0.2
    min_expected: float = 5.0
    min_separation: float = 3.0

    def describe(self) -> str:
        return RULE.format(p_value=self.p_value, min_pixels=self.min_pixels, min_separation=self.min_separation)


@dataclass(frozen=True)
class PhaseTest:
    """The G-test of one cluster against its nearest cluster (and the separation of their pixels)."""

    statistic: float
    dof: int
    p_value: float
    separation: float = float("inf")


@dataclass(frozen=True)
class Settled:
    """What :func:`settle_phases` did.

    Attributes
    ----------
    mapping : numpy.ndarray of int, shape (n_clusters,)
        The cluster each input cluster's pixels now belong to (an input cluster
        number, a phase), or -1 for unassigned.
    actions : list of dict
        One per cluster that is not a phase, in the order decided: ``cluster``,
        ``pixels``, ``counts``, ``into`` (the input cluster it was merged into, -1:
        unassigned), ``statistic``, ``dof``, ``p_value`` of its G-test against its nearest
        cluster and the ``separation`` of their pixels.
    """

    mapping: np.ndarray
    actions: list


#: The verdict when there is nothing to test against, or too few counts: the same shape cannot be rejected.
UNTESTED = PhaseTest(0.0, 0, 1.0)


def g_test(a, b, min_expected: float = 5.0) -> PhaseTest:
    """G-test that the counts ``a`` and ``b`` (same bins) are draws of one spectrum shape.

    Bins where either row expects fewer than ``min_expected`` counts are pooled
    into one bin. With fewer than two bins left the test cannot reject (p = 1).
    """
    table = np.vstack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)])
    rows, total = table.sum(axis=1), table.sum()
    if total <= 0 or np.any(rows <= 0):
        return UNTESTED
    expected = np.outer(rows, table.sum(axis=0)) / total
    thin = np.any(expected < min_expected, axis=0)
    pooled = table[:, thin].sum(axis=1, keepdims=True)
    table = np.hstack([table[:, ~thin]] + ([pooled] if np.any(pooled > 0) else []))
    dof = table.shape[1] - 1
    if dof < 1:
        return UNTESTED
    expected = np.outer(rows, table.sum(axis=0)) / total
    observed = table > 0
    g = 2.0 * float(np.sum(table[observed] * np.log(table[observed] / expected[observed])))
    return PhaseTest(max(g, 0.0), int(dof), float(chi2.sf(max(g, 0.0), dof)))


def separation(a: np.ndarray, b: np.ndarray) -> float:
    """How many pooled standard deviations apart the pixels ``a`` and ``b`` (pixels, bins) lie.

    The larger of two distances, each between the two median projections over the
    pixel-weighted pooled robust standard deviation (:func:`_apart`):

    - shape: each pixel's counts over its total, projected on ``w = (s_a - s_b) / s``,
      where ``s_a``, ``s_b`` are the two clusters' summed shapes and ``s`` their pair's
      (the linear discriminant of multinomial counts, whose variance in a bin is about
      its mean); a thickness change leaves it alone;
    - brightness: ``log(1 + total counts)`` of each pixel, which tells a near-empty
      support or resin from the sample whose shape its few counts cannot show.

    Pixels without counts carry no shape and count only in the brightness. With fewer
    than two pixels on a side, or no spread, a distance is infinite (the pixels cannot
    be said to overlap).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = a.sum(axis=1), b.sum(axis=1)
    brightness = _apart(np.log1p(na), np.log1p(nb))
    a, b, na, nb = a[na > 0], b[nb > 0], na[na > 0], nb[nb > 0]
    if len(a) < 2 or len(b) < 2:
        return float("inf")
    sa, sb = a.sum(axis=0), b.sum(axis=0)
    pair = (sa + sb) / (sa.sum() + sb.sum())
    present = pair > 0
    w = np.zeros_like(pair)
    w[present] = (sa[present] / sa.sum() - sb[present] / sb.sum()) / pair[present]
    return max(_apart((a / na[:, None]) @ w, (b / nb[:, None]) @ w), brightness)


def _apart(ta: np.ndarray, tb: np.ndarray) -> float:
    """|median ta - median tb| / the pixel-weighted pooled robust standard deviation.

    Medians and 1.4826 x the median absolute deviation (the standard deviation where
    a side has none, as few discrete counts can give) keep a cluster that holds two
    populations, such as the sample and some of its resin, from hiding a third:
    its majority sets its location and spread. Infinite without two values on each
    side or any spread.
    """
    if ta.size < 2 or tb.size < 2:
        return float("inf")
    spreads = []
    for t in (ta, tb):
        mad = 1.4826 * float(np.median(np.abs(t - np.median(t))))
        spreads.append(mad if mad > 0 else float(t.std()))
    pooled = (ta.size * spreads[0] ** 2 + tb.size * spreads[1] ** 2) / (ta.size + tb.size)
    if pooled <= 0:
        return float("inf")
    return float(abs(np.median(ta) - np.median(tb)) / np.sqrt(pooled))


def binned_spectra(spectra, rule: PhaseRule, offset_kev: float | None = None,
                   scale_kev: float | None = None) -> np.ndarray:
    """``spectra`` (n, channels) in the rule's energy window and bins (whole channels without a calibration)."""
    spectra = np.asarray(spectra, dtype=np.float64)
    window = energy_window(spectra.shape[1], offset_kev, scale_kev, rule.energy_min_kev, None)
    calibrated = offset_kev is not None and scale_kev is not None and scale_kev > 0
    factor = max(1, int(round(rule.bin_kev / scale_kev))) if calibrated else 1
    return rebin_channels(spectra[:, window], factor)


def nearest_cluster(sums: np.ndarray, k: int, alive: list[int]) -> int:
    """The cluster of ``alive`` (other than ``k``) whose spectrum shape is nearest ``k``'s (Hellinger)."""
    others = [j for j in alive if j != k]
    distance = hellinger_matrix(sums[[k]], sums[others])[0]
    return others[int(np.argmin(distance))]


def binned_pixels(X: np.ndarray, rule: PhaseRule, offset_kev: float | None, scale_kev: float | None,
                  block: int = 4096) -> np.ndarray:
    """Every pixel's counts in the rule's window and bins, float32 (pixels, bins), a block of rows at a time.

    Integer counts are summed as integers (exact, and without a float64 copy of each block);
    other inputs as :func:`binned_spectra` does.
    """
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.integer):
        rows = [binned_spectra(X[r0:r0 + block], rule, offset_kev, scale_kev).astype(np.float32)
                for r0 in range(0, X.shape[0], block)]
        return np.vstack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    window = energy_window(X.shape[1], offset_kev, scale_kev, rule.energy_min_kev, None)
    calibrated = offset_kev is not None and scale_kev is not None and scale_kev > 0
    factor = max(1, int(round(rule.bin_kev / scale_kev))) if calibrated else 1
    width = len(range(X.shape[1])[window])
    bins = width // factor if factor > 1 else width
    out = np.empty((X.shape[0], bins), dtype=np.float32)
    for r0 in range(0, X.shape[0], block):
        part = X[r0:r0 + block, window][:, :bins * factor]
        out[r0:r0 + block] = part.reshape(part.shape[0], bins, factor).sum(axis=2, dtype=np.int64)
    return out


@dataclass(frozen=True)
class PhaseCounts:
    """What :func:`settle_phases` reads of a cube: every pixel's counts in a rule's bins, and its total.

    The same for every labelling of the same counts: found once (:func:`phase_counts`) and
    given to :func:`settle_phases` for each candidate labelling.
    """

    binned: np.ndarray  # (pixels, bins), float32
    totals: np.ndarray  # (pixels,), int64 for counts, float64 otherwise


def phase_counts(cube, rule: PhaseRule = PhaseRule(), offset_kev: float | None = None,
                 scale_kev: float | None = None) -> PhaseCounts:
    """The :class:`PhaseCounts` of ``cube`` (rows, columns, channels) or (pixels, channels)."""
    X = np.asarray(cube).reshape(-1, np.shape(cube)[-1])
    totals = X.sum(axis=1, dtype=np.int64 if np.issubdtype(X.dtype, np.integer) else np.float64)
    return PhaseCounts(binned_pixels(X, rule, offset_kev, scale_kev), totals)


def settle_phases(cube, labels, rule: PhaseRule = PhaseRule(), offset_kev: float | None = None,
                  scale_kev: float | None = None) -> Settled:
    """Merge the clusters their counts cannot tell from their nearest; unassign distinct specks.

    Parameters
    ----------
    cube : array-like, shape (rows, columns, channels) or (pixels, channels), or PhaseCounts
        Counts, or their :func:`phase_counts` under the same rule and calibration.
    labels : array-like of int, shape (rows, columns) or (pixels,)
        Clusters 0..n-1, negative for unassigned (left alone).
    rule : PhaseRule
    offset_kev, scale_kev : float, optional
        Energy calibration of the channels; without it all channels are compared, one per bin.

    Returns
    -------
    Settled
    """
    found = cube if isinstance(cube, PhaseCounts) else phase_counts(cube, rule, offset_kev, scale_kev)
    binned, totals = found.binned, found.totals
    lab = np.asarray(labels, dtype=np.int64).ravel()
    n = int(lab.max()) + 1 if lab.size and lab.max() >= 0 else 0
    members = [lab == c for c in range(n)]
    sums = np.array([binned[m].sum(axis=0, dtype=np.float64) for m in members]).reshape(n, binned.shape[1])
    counts = np.array([totals[m].sum(dtype=np.float64) for m in members])  # one pass over the cube, not n
    pixels = np.array([m.sum() for m in members], dtype=np.int64)
    mapping = np.arange(n, dtype=np.int64)
    actions, alive, distinct = [], list(range(n)), {}
    for k in sorted(range(n), key=lambda c: (counts[c], pixels[c], c)):
        if len(alive) < 2:
            break
        nearest = nearest_cluster(sums, k, alive)
        test = g_test(sums[k], sums[nearest], rule.min_expected)
        if test.p_value < rule.p_value:
            group = mapping[np.maximum(lab, 0)]
            apart = separation(binned[(lab >= 0) & (group == k)], binned[(lab >= 0) & (group == nearest)])
            test = PhaseTest(test.statistic, test.dof, test.p_value, apart)
            if apart >= rule.min_separation:
                distinct[k] = test
                continue
        actions.append(_action(k, pixels[k], counts[k], nearest, test))
        for row in (sums, counts, pixels):
            row[nearest] += row[k]
        mapping[mapping == k] = nearest
        alive.remove(k)
    for k in sorted(alive, key=lambda c: (pixels[c], c)):
        if pixels[k] < rule.min_pixels and k in distinct:  # a lone cluster is the whole scan, not a speck
            actions.append(_action(k, pixels[k], counts[k], -1, distinct[k]))
            mapping[mapping == k] = -1
    return Settled(mapping, actions)


def _action(cluster: int, pixels: int, counts: float, into: int, test: PhaseTest) -> dict:
    return {"cluster": int(cluster), "pixels": int(pixels), "counts": float(counts), "into": int(into),
            "statistic": test.statistic, "dof": test.dof, "p_value": test.p_value, "separation": test.separation}


def phase_choices(rule: PhaseRule, actions: list, into_labels) -> dict:
    """The rule and what it did as flat number arrays (the ``choices`` of a published update).

    ``not_phase_pixels[i]``, ``not_phase_counts[i]``: the cluster that is not a phase;
    ``not_phase_into[i]``: the label of the cluster it was merged into, -1 when it was
    unassigned; ``not_phase_statistic[i]``, ``not_phase_dof[i]``, ``not_phase_p_value[i]``:
    its G-test against its nearest cluster (dof 0: too few counts to test);
    ``not_phase_separation[i]``: how many pooled standard deviations its pixels lie from its
    nearest's (:func:`separation`; -1 where the G-test alone decided).
    ``into_labels`` gives the published label of each ``action["into"]``.
    """
    return {"phase_rule": rule.describe(),
            "not_phase_pixels": [float(a["pixels"]) for a in actions],
            "not_phase_counts": [float(a["counts"]) for a in actions],
            INTO_KEY: [float(-1 if a["into"] < 0 else into_labels[a["into"]]) for a in actions],
            "not_phase_statistic": [round(a["statistic"], 2) for a in actions],
            "not_phase_dof": [float(a["dof"]) for a in actions],
            "not_phase_p_value": [float(f"{a['p_value']:.3g}") for a in actions],
            "not_phase_separation": [round(a["separation"], 2) if np.isfinite(a["separation"]) else -1.0
                                     for a in actions]}
