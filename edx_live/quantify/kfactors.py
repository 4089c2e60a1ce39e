"""Cliff-Lorimer k-factors from the command line (``"Fe_Ka=1.450226"``) or a configuration mapping.

Line names are checked against exspy's element database, so a typo such as
``Fe_Kz`` is an error at start-up rather than a missing element later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .lines import LineError, validate_line

_EXAMPLE = "e.g. --kfactor Fe_Ka=1.450226 or [quantify.kfactors] Fe_Ka = 1.450226"


class KFactorError(ValueError):
    """A k-factor that cannot be used; the message says how to write it."""


def parse_kfactor(text: str) -> tuple[str, float]:
    """Parse one ``"LINE=VALUE"`` string into ``(line, value)``.

    Parameters
    ----------
    text : str
        For example ``"Fe_Ka=1.450226"``; spaces around ``=`` are allowed.

    Raises
    ------
    KFactorError
        Missing ``=``, unknown line, or a value that is not a positive number.
    """
    line, sep, value = str(text).partition("=")
    if not sep:
        raise KFactorError(f"k-factor {text!r} must be written LINE=VALUE, {_EXAMPLE}")
    return check_kfactor(line.strip(), value.strip())


def check_kfactor(line: str, value) -> tuple[str, float]:
    """Validate one line name and k-factor value; return ``(line, float(value))``."""
    try:
        line = validate_line(line)
    except LineError as exc:
        raise KFactorError(f"k-factor for an unknown X-ray line: {exc}") from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise KFactorError(f"k-factor of {line} must be a number, got {value!r}; {_EXAMPLE}") from None
    if not math.isfinite(number) or number <= 0:
        raise KFactorError(f"k-factor of {line} must be a positive finite number, got {value!r}; "
                           "k-factors are ratios of sensitivities, relative to a reference line, "
                           f"{_EXAMPLE}")
    return line, number


def parse_kfactors(value: Mapping[str, float] | Iterable[str] | str | None) -> dict[str, float]:
    """k-factors per X-ray line from a mapping, ``"LINE=VALUE"`` strings, or one comma-separated string.

    Parameters
    ----------
    value : mapping, iterable of str, str or None
        ``{"Fe_Ka": 1.45}``, ``["Fe_Ka=1.45", "Pt_La=5.08"]`` or
        ``"Fe_Ka=1.45,Pt_La=5.08"``; None or empty gives ``{}``.

    Returns
    -------
    dict of str to float

    Raises
    ------
    KFactorError
        Unknown line, non-positive value, or the same line given twice with different values.
    """
    if not value:
        return {}
    if isinstance(value, Mapping):
        pairs = [check_kfactor(line, v) for line, v in value.items()]
    else:
        items = value.split(",") if isinstance(value, str) else value
        pairs = [parse_kfactor(item) for item in items if str(item).strip()]
    result: dict[str, float] = {}
    for line, number in pairs:
        if result.get(line, number) != number:
            raise KFactorError(f"k-factor of {line} given twice ({result[line]} and {number}); keep one")
        result[line] = number
    return result


def missing_kfactors(lines: Iterable[str], kfactors: Mapping[str, float]) -> list[str]:
    """The lines of ``lines`` that have no k-factor."""
    return [line for line in lines if line not in kfactors]


def require_kfactors(lines: Iterable[str], kfactors: Mapping[str, float]) -> list[float]:
    """k-factors in the order of ``lines``; :class:`KFactorError` names any that are missing."""
    lines = list(lines)
    missing = missing_kfactors(lines, kfactors)
    if missing:
        hint = " ".join(f"--kfactor {line}=VALUE" for line in missing)
        raise KFactorError(f"no k-factor for {', '.join(missing)} (quantifying {', '.join(lines)}); "
                           f"give them with {hint} or in [quantify.kfactors]")
    return [float(kfactors[line]) for line in lines]
