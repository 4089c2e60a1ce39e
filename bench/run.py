"""Run every benchmark in this folder (python3 make.py bench), or the ones named: run.py ingest latency.

The soak (20 minutes of acquisitions in a row, ``soak.py``) runs only when named: run.py soak.
"""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import progress  # noqa: E402

#: Run only when named.
LONG = {"soak"}

if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.stem for p in HERE.glob("*.py")
                                   if p.stem != "run" and not p.stem.startswith("_") and p.stem not in LONG)
    for name in progress(names, desc="benchmarks", unit="script"):
        print(f"== {name}", flush=True)
        sys.argv = [str(HERE / f"{name}.py")]  # each with its own defaults
        runpy.run_path(sys.argv[0], run_name="__main__")
