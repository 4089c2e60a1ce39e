"""Configurational entropy of mixing, in units of the gas constant R.

For the species of one sublattice with atomic fractions x_i (renormalised over
those species), S/R = -sum x_i ln x_i: 0 for a pure element, ln 5 = 1.61 for an
equiatomic five-element alloy (the "high-entropy" threshold of 1.5 R is often
quoted). Anions (S, O, Se, Te by default) sit on their own sublattice and are
left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Anions left out of the cation sublattice by default.
ANIONS = ("S", "O", "Se", "Te")


def sublattice(elements: Sequence[str], species: Sequence[str] = (), exclude: Sequence[str] = ANIONS) -> list[str]:
    """The elements entering the entropy: ``species`` if given (those present), else ``elements`` minus ``exclude``."""
    if species:
        return [e for e in elements if e in set(species)]
    return [e for e in elements if e not in set(exclude)]


def configurational_entropy(atomic_fraction: np.ndarray, elements: Sequence[str],
                            species: Sequence[str]) -> np.ndarray:
    """S/R over ``species`` of atomic fractions (..., n_elements) in ``elements`` order.

    Negative fractions (an absent element measured slightly below zero) count as zero.
    NaN where the composition is unknown or no species has a positive fraction.
    """
    index = [list(elements).index(e) for e in species]
    x = np.clip(np.asarray(atomic_fraction, dtype=np.float64)[..., index], 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = x / x.sum(axis=-1, keepdims=True)
        terms = np.where(x > 0, -x * np.log(np.where(x > 0, x, 1)), 0.0)
    s = terms.sum(axis=-1)
    return np.where(np.isfinite(x).all(axis=-1), s, np.nan) if index else np.full(x.shape[:-1], np.nan)
