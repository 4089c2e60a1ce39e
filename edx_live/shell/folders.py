"""Folders the service writes to (session folders, recordings), checked at start-up."""

from __future__ import annotations

from pathlib import Path


def writable_folder(root: Path, what: str, fix: str, mode: int = 0o777) -> Path:
    """Create ``root`` (with ``mode``) if needed and check a file can be written there.

    Raises ``OSError`` saying which folder (``what``) is not writable, why, and ``fix``: what to set.
    """
    root = Path(root)
    try:
        root.mkdir(mode=mode, parents=True, exist_ok=True)
        probe = root / ".edx-live-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"{what} {root} is not writable ({exc.strerror or exc}): {fix}") from None
    return root
