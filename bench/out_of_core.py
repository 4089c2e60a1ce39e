"""Out-of-core processing: peak memory and time against scan size, with the address space capped.

For each scan side N: a synthetic four-phase N x N x CHANNELS uint16 spectrum image is written
to a chunked .hspy file band by band (edx_live.scale.phantom), then processed by
``process_out_of_core`` in a child process whose address space (RLIMIT_AS) is capped at the
virtual size of an idle child that has imported and warmed the same libraries, plus
``--allowance-mb``. The scan is several times that allowance at the larger sizes. The child's
peak resident memory (its own VmHWM) and wall time are printed beside the file size; the labels are
compared with the phantom's truth (adjusted Rand index).

At the smallest size the same file also goes through the in-memory offline path
(``edx_live.shell.offline.process_file``) without a cap, and the two answers are compared
(labels ARI; compositions, difference over the combined sigma).

Run: ``python bench/out_of_core.py [--sizes 256 512 1024] [--chunk-mb 32] [--allowance-mb 512]``.
Big files live in ``--workdir`` (default a temporary folder under /tmp) and are deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

CHANNELS = 1024
DOSE = 100.0

CHILD_WARM = r"""
import resource, sys, numpy as np
import hyperspy.api, exspy
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from edx_live.config import Settings
from edx_live.scale import lazy
from edx_live.quantify import samples
X = np.random.default_rng(0).poisson(5.0, (2000, 64)).astype(float)
GaussianMixture(2, random_state=0).fit(PCA(4).fit_transform(X))
status = open("/proc/self/status").read()
kb = {l.split(":")[0]: int(l.split()[1]) for l in status.splitlines() if l.startswith(("VmPeak", "VmHWM"))}
print(kb["VmPeak"] * 1024, kb["VmHWM"] * 1024)
"""

CHILD_RUN = r"""
import json, sys, time
from edx_live.config import Settings
from edx_live.scale.lazy import process_out_of_core
t = time.perf_counter()
summary = process_out_of_core(sys.argv[1], sys.argv[2], Settings(), chunk_mb=int(sys.argv[3]))
status = open("/proc/self/status").read()
hwm = [int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM")][0] * 1024
print("RESULT", json.dumps({"seconds": time.perf_counter() - t, "bands": summary["out_of_core"]["bands"],
                            "peak_rss": hwm}))
"""


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("NUMBA_NUM_THREADS", "1")
    return env


def baseline() -> tuple[int, int]:
    """(virtual size, resident size) of an idle child with the libraries imported and warmed."""
    run = subprocess.run([sys.executable, "-c", CHILD_WARM], capture_output=True, text=True, env=_env(), check=True)
    vm, rss = (int(v) for v in run.stdout.split()[-2:])
    return vm, rss


def limited_run(path: Path, out: Path, chunk_mb: int, limit: int | None) -> dict:
    """Run process_out_of_core in a child under RLIMIT_AS = ``limit`` bytes; its peak RSS and time."""
    def cap():
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CHILD_RUN, str(path), str(out), str(chunk_mb)],
                         capture_output=True, text=True, env=_env(), preexec_fn=cap)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"out-of-core run failed (limit {limit}):\n{run.stderr[-3000:]}")
    # The child's own high-water mark (VmHWM): ru_maxrss would carry the parent's resident size at fork.
    return {**json.loads(run.stdout.split("RESULT", 1)[1]), "wall_s": wall}


def write_file(side: int, folder: Path, seed: int = 0):
    from edx_adapters.synthetic import make_phantom

    from edx_live.scale.phantom import write_phantom

    phantom = make_phantom((side, side), channels=CHANNELS, seed=seed)
    path = write_phantom(folder / f"phantom_{side}.hspy", phantom, dose=DOSE, rows_per_chunk=16)
    return path, phantom


def agreement(out: Path, truth) -> float:
    import hyperspy.api as hs
    from sklearn.metrics import adjusted_rand_score

    labels = hs.load(out / "labels_pca-gmm.hspy").data
    return float(adjusted_rand_score(truth.ravel(), labels.ravel()))


def compare_in_memory(path: Path, ooc: Path, mem: Path) -> list[str]:
    """Labels ARI and composition differences of the out-of-core answer against process_file's."""
    import hyperspy.api as hs
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from edx_live.config import Settings
    from edx_live.shell.offline import process_file

    t0 = time.perf_counter()
    process_file(path, mem, Settings(refit={"workflows": ["pca-gmm"]}), progress=False)
    seconds = time.perf_counter() - t0
    a = hs.load(ooc / "labels_pca-gmm.hspy").data
    b = hs.load(mem / "labels_pca-gmm.hspy").data
    lines = [f"in-memory process_file: {seconds:.1f} s; labels ARI out-of-core vs in-memory "
             f"{adjusted_rand_score(b.ravel(), a.ravel()):.3f}"]
    ca = json.loads((ooc / "summary.json").read_text())["workflows"]["pca-gmm"]["clusters"]
    cb = json.loads((mem / "summary.json").read_text())["workflows"]["pca-gmm"]["clusters"]
    masks_a = {c["label"]: a == c["label"] for c in ca}
    for c in ca:
        # the in-memory cluster covering most of this one's pixels
        overlap = {d["label"]: int(np.count_nonzero(masks_a[c["label"]] & (b == d["label"]))) for d in cb}
        match = max(overlap, key=overlap.get)
        d = next(x for x in cb if x["label"] == match)
        parts = []
        for el, r in (c["composition"] or {}).items():
            s = (d["composition"] or {}).get(el, {})
            if r["atomic_percent"] is None or s.get("atomic_percent") is None:
                other = "n.d." if s.get("atomic_percent") is None else round(s["atomic_percent"], 1)
                mine = "n.d." if r["atomic_percent"] is None else round(r["atomic_percent"], 1)
                parts.append(f"{el} {mine}/{other}")
                continue
            sigma = float(np.hypot(r["atomic_percent_sigma"], s["atomic_percent_sigma"]))
            diff = r["atomic_percent"] - s["atomic_percent"]
            z = diff / sigma if sigma else 0.0
            parts.append(f"{el} {r['atomic_percent']:.1f}±{r['atomic_percent_sigma']:.1f} vs "
                         f"{s['atomic_percent']:.1f}±{s['atomic_percent_sigma']:.1f} ({z:+.1f} sigma)")
        lines.append(f"  cluster {c['label']} ({c['pixels']} px) ~ in-memory {match} ({d['pixels']} px): "
                     + "; ".join(parts))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--chunk-mb", type=int, default=32)
    parser.add_argument("--allowance-mb", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-compare", action="store_true", help="skip the in-memory comparison")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ooc_bench_", dir=args.workdir or "/tmp"))
    print(machine())
    if not args.no_compare:
        core_shell = Path(__file__).resolve().parents[1] / "edx_live" / "data" / "core_shell.hspy"
        run = limited_run(core_shell, work / "session_core_shell", 1, None)
        print(f"core_shell.hspy 64x64x992 out of core, chunk_mb 1: {run['bands']} bands, {run['wall_s']:.1f} s")
        for line in compare_in_memory(core_shell, work / "session_core_shell", work / "memory_core_shell"):
            print(line, flush=True)
    vm, rss = baseline()
    limit = vm + (args.allowance_mb << 20)
    print(f"idle child with the libraries warmed: virtual {vm / 2**30:.2f} GiB, resident {rss / 2**20:.0f} MiB; "
          f"limit RLIMIT_AS = virtual + {args.allowance_mb} MiB = {limit / 2**30:.2f} GiB; chunk_mb {args.chunk_mb}")
    print(f"{'scan':>16} {'cube':>8} {'file':>9} {'x allowance':>11} {'bands':>5} {'peak RSS':>9} {'RSS-idle':>9} "
          f"{'time':>7} {'ARI truth':>9}")
    try:
        for side in sorted(args.sizes):
            t0 = time.perf_counter()
            path, phantom = write_file(side, work)
            written = time.perf_counter() - t0
            size = side * side * CHANNELS * 2  # uint16 counts, uncompressed
            on_disk = path.stat().st_size
            out = work / f"session_{side}"
            r = limited_run(path, out, args.chunk_mb, limit)
            ari = agreement(out, phantom.binned_labels(2))
            print(f"{side:>5}x{side}x{CHANNELS} {size / 2**30:>6.2f}Gi {on_disk / 2**30:>7.2f}Gi "
                  f"{size / (args.allowance_mb << 20):>11.1f} "
                  f"{r['bands']:>5} {r['peak_rss'] / 2**20:>7.0f}Mi {(r['peak_rss'] - rss) / 2**20:>7.0f}Mi "
                  f"{r['wall_s']:>6.1f}s {ari:>9.3f}   (file written in {written:.0f} s"
                  + ")", flush=True)
            if side == min(args.sizes) and not args.no_compare:
                for line in compare_in_memory(path, out, work / f"memory_{side}"):
                    print(line, flush=True)
            path.unlink()
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
