"""Deliberate bugs that the suite must catch: each is applied to a copy of the code and must fail a test.

Slow (a few minutes per bug): ``python3 make.py test -m slow -k mutants``. The bugs are the
ones found to slip through an earlier suite, plus an overflow of the cube's counters.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: name -> (file, original text, mutated text, tests that must catch it)
MUTANTS = {
    "composition labels by row, not id": (
        "edx_live/pipeline/documents.py", 'update={"label": int(ids[c.label])}', 'update={"label": int(c.label)}',
        ["tests/test_refit_ids.py"]),
    "ids reversed": (
        "edx_live/pipeline/documents.py", '    """The ``composition/<workflow>`` document; clusters carry the segmentation\'s ids."""\n'
                                 "    ids = cluster_ids(result)",
        '    """The ``composition/<workflow>`` document; clusters carry the segmentation\'s ids."""\n'
        "    ids = cluster_ids(result)[::-1]",
        ["tests/test_refit_ids.py"]),
    "quantifier walks ids as rows": (
        "edx_live/pipeline/refit.py", "row_labels(result), result.n_clusters", "result.labels, result.n_clusters",
        ["tests/test_refit_ids.py"]),
    "setup cache ignores the acquisition": (
        "edx_live/pipeline/refit.py", "if self._record is None or self._record.acquisition_id != aid:",
        "if self._record is None:", ["tests/test_refit_ids.py"]),
    "pca-gmm confidence is 1 - posterior": (
        "edx_live/segment/pca_gmm.py", "self.probabilities_ = resp.max(axis=1)",
        "self.probabilities_ = 1.0 - resp.max(axis=1)", ["tests/test_refit_ids.py"]),
    "UMAP warm start dropped while flagged warm": (
        "edx_live/segment/umap_hdbscan.py", 'extra = {"init": np.asarray(init, dtype=np.float64), ',
        "extra = {", ["tests/test_refit_ids.py"]),
    "cube counters wrap": (
        "edx_live/core/accumulator.py", "        if not self._saturated:\n",
        "        return\n        if not self._saturated:\n", ["tests/test_hostile_input.py"]),
    "frame index unbounded": (
        "protocol/edx_protocol/fields.py", "Index = wire_int(ge=0, le=MAX_INDEX)", "Index = wire_int(ge=0)",
        ["tests/test_protocol.py", "tests/test_hostile_input.py"]),
}


def _copy(tmp: Path) -> Path:
    root = tmp / "mutant"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info",
                                                              ".pytest_cache", "out"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_suite_catches(name, tmp_path):
    path, original, mutated, tests = MUTANTS[name]
    root = _copy(tmp_path)
    source = (root / path).read_text()
    assert source.count(original) == 1, f"the code changed: update the mutant {name!r}"
    (root / path).write_text(source.replace(original, mutated))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / p) for p in ("", "protocol", "adapters")),
           "EDX_LIVE_DATA": str(Path(os.environ.get("EDX_LIVE_DATA", REPO.parent / "shared" / "data")))}
    where = subprocess.run([sys.executable, "-c", "import edx_live, edx_protocol, edx_adapters as a; "
                            "print(edx_live.__file__, edx_protocol.__file__, a.__file__)"],
                           cwd=root, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(w).is_relative_to(root) for w in where), where  # the copy is tested, not the checkout
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                         cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 1, f"{name!r} was not caught:\n{run.stdout[-2000:]}"
