"""SNIP background of a spectrum (Ryan et al. 1988; Morhac 2008), for finding its peaks. Pure numpy."""

from __future__ import annotations

import numpy as np


def snip_background(counts: np.ndarray, half_window: np.ndarray, smooth_half: np.ndarray) -> np.ndarray:
    """SNIP background of ``counts``, with a clipping half-window (channels) per channel.

    The spectrum is averaged over ``2 * smooth_half + 1`` channels and log-log-sqrt transformed
    (Ryan et al. 1988); then, for ``p`` = 1 ... ``half_window`` of each channel, the channel is
    lowered to the larger of its neighbours' mean ``p`` channels away and their fourth-order
    estimate (Morhac 2008, ROOT ``TSpectrum::Background`` order 4), which follows the curved
    low-energy continuum instead of cutting into it. A channel is lowered only when it stands
    more than the Poisson noise of the averaged spectrum above that estimate, so that noise
    alone does not pull the background down and fake weak peaks everywhere.
    """
    counts = np.asarray(counts, dtype=float)
    half_window = np.asarray(half_window, dtype=int)
    n, m = counts.size, int(half_window.max())
    size = window_sum(np.ones(n), smooth_half)
    smoothed = window_sum(counts, smooth_half) / size
    v0 = _lls(smoothed)
    noise = _lls(smoothed + np.sqrt(np.maximum(smoothed, 1.0) / size)) - v0
    v = np.pad(v0, m, mode="edge")
    for p in range(1, m + 1):
        q = p // 2
        mean = 0.5 * (v[m - p:m - p + n] + v[m + p:m + p + n])
        fourth = (4 * (v[m - q:m - q + n] + v[m + q:m + q + n]) - v[m - 2 * q:m - 2 * q + n]
                  - v[m + 2 * q:m + 2 * q + n]) / 6
        inner = v[m:m + n]
        v[m:m + n] = np.where(p <= half_window, np.minimum(inner, np.maximum(mean, fourth) + noise), inner)
    return (np.exp(np.exp(v[m:m + n]) - 1) - 1) ** 2 - 1


def _lls(x: np.ndarray) -> np.ndarray:
    """Log-log-sqrt transform: compresses the peaks so clipping treats small and large alike."""
    return np.log(np.log(np.sqrt(x + 1) + 1) + 1)


def window_sum(values: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over channels i - half[i] ... i + half[i] (clipped at the ends)."""
    cumulative = np.concatenate(([0.0], np.cumsum(values, dtype=float)))
    index = np.arange(values.size)
    return cumulative[np.minimum(index + half + 1, values.size)] - cumulative[np.maximum(index - half, 0)]
