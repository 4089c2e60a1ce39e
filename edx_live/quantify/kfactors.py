"""Cliff-Lorimer k-factors from the command line (``"Fe_Ka=1.450226"``) or a configuration mapping.

Line names are checked against exspy's element database, so a typo such as
``Fe_Kz`` is an error at start-up rather than a missing element later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .lines import LineError, validate_line

#: Provenance of k-factors the user gave (command line, configuration).
USER_KFACTORS = "user: config/command line"

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


def read_kfactor_table(path) -> dict[str, float]:
    """k-factors from a CSV table: one ``LINE,VALUE`` row per line, e.g. ``Fe_Ka,1.450226``.

    Accepted: comma, semicolon or tab between the two columns; an optional header row
    whose second column is not a number (e.g. ``line,kfactor``); blank lines and lines
    starting with ``#``; extra columns after the value (ignored, e.g. a reference).
    Every line name is checked against exspy's database.

    Raises
    ------
    KFactorError
        The file cannot be read, or a row is malformed; the message names the file and row.
    """
    import re
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise KFactorError(f"cannot read the k-factor table {path}: {exc.strerror or exc}; give the path of a "
                           "CSV file with rows LINE,VALUE (e.g. Fe_Ka,1.450226)") from None
    result: dict[str, float] = {}
    for number, row in enumerate(text.splitlines(), start=1):
        row = row.strip()
        if not row or row.startswith("#"):
            continue
        cells = [c.strip().strip('"') for c in re.split(r"[,;\t]", row)]
        if len(cells) < 2:
            raise KFactorError(f"{path}:{number}: expected LINE,VALUE (e.g. Fe_Ka,1.450226), got {row!r}")
        if not result and not _is_number(cells[1]):
            continue  # header
        try:
            line, value = check_kfactor(cells[0], cells[1])
        except KFactorError as exc:
            raise KFactorError(f"{path}:{number}: {exc}") from None
        if result.get(line, value) != value:
            raise KFactorError(f"{path}:{number}: k-factor of {line} given twice ({result[line]} and {value})")
        result[line] = value
    if not result:
        raise KFactorError(f"the k-factor table {path} has no rows; write one LINE,VALUE row per X-ray line")
    return result


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
