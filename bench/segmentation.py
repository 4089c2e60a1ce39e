"""Segmentation quality, stability and speed on the synthetic acquisition, beside the study's workflow and HyperSpy's route.

python bench/segmentation.py [--sizes 128 512] [--dose 200] [--quick]

1. Adjusted Rand index (ARI) against the true labels (binned 2x2, dominant phase),
   at 10, 25, 50 and 100 % of the dose, for both workflows as the service runs them,
   for the study's workflow as written and for HyperSpy's route, in the same run
   and on the same cubes.
2. Refit wall time at the largest size after warm-up: ours cold (a fresh fit),
   ours warm-started from the previous refit (as the live service refits), and
   as written; the ratio is what counts on a shared machine.
3. Over an acquisition replayed sweep by sweep with a refit after each sweep
   (the real Analyzer, tracking included): refits until ``converged``, the dose
   fraction then, ARI then, and cluster identity changes once converged.

"As written": RobustScaler on the raw counts (every channel), PCA then a
GaussianMixture (full covariance), and UMAP to 4 dimensions then HDBSCAN, with
library defaults. It is told the true number of phases and given 4 PCA
components, which favours it: in the study a person chooses them.

"HyperSpy" (``bench/hyperspy_route.py``): what a HyperSpy user does, following the
HyperSpy user guide, "Machine learning" chapter, sections "Decomposition" and
"Cluster analysis"
(https://hyperspy.org/hyperspy-doc/current/user_guide/mva/clustering.html):
the cube as an exspy ``EDS_TEM`` signal (float32, energy axis in keV), binned 2x2
(the benchmark's cubes are binned already, as ``s.rebin(scale=(2, 2, 1))`` would),
``s.decomposition(normalize_poissonian_noise=True)`` (SVD, Keenan-Kotula weighting),
as many components as ``s.estimate_elbow_position() + 1`` (HyperSpy's own
``number_significant_components``), ``s.estimate_number_of_clusters(cluster_source=
"decomposition", preprocessing="norm", algorithm="kmeans", metric="elbow")`` over
k = 1..10, then ``s.cluster_analysis(cluster_source="decomposition",
preprocessing="norm", algorithm="kmeans", n_clusters=k)`` (KMeans n_init=8 as in
the guide's example, random_state=0). Nothing is tuned to the data. "hyperspy
k=true" is the same decomposition clustered with k = the true number of phases.
Its time is the whole route: decomposition and elbow, estimate (automatic only),
clustering; the two share one decomposition. Above 8192 binned pixels the
estimate of k runs on a random 8192-pixel subset (``navigation_mask``): HyperSpy
computes each cluster's full pairwise distance matrix for every k tried.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hyperspy_route  # noqa: E402
from _common import progress  # noqa: E402

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def as_written(X: np.ndarray, workflow: str, n_clusters: int, min_cluster_size: int) -> np.ndarray:
    """The study's recipe on raw counts ``X`` (n_pixels, channels)."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import RobustScaler

    Z = RobustScaler().fit_transform(X.astype(np.float64))
    if workflow == "pca-gmm":
        return GaussianMixture(n_clusters, random_state=0).fit_predict(PCA(4, random_state=0).fit_transform(Z))
    import hdbscan
    import umap

    embedding = umap.UMAP(n_components=4, random_state=0).fit_transform(Z)
    return hdbscan.HDBSCAN(min_cluster_size=min_cluster_size).fit_predict(embedding)


def ours(analyzer, workflow: str, cube: np.ndarray, phantom, init=None):
    from edx_protocol import Start

    from edx_live.segment import segment

    ax = phantom.energy_axis
    start = Start(acquisition_id="bench", seq=0, **phantom.start_fields())
    end = ax.offset_kev + ax.scale_kev * ax.channels
    estimator = analyzer.estimator(workflow, start, end)
    if init is not None:
        estimator.set_params(init=init)
    return segment(cube, estimator, workflow, offset_kev=ax.offset_kev, scale_kev=ax.scale_kev)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def hyperspy_cells(cube: np.ndarray, phantom, truth: np.ndarray, n_phases: int, times: dict) -> tuple[list, dict]:
    """HyperSpy's route on ``cube``, automatic and told ``n_phases``: two table cells and the automatic run's info."""
    from sklearn.metrics import adjusted_rand_score

    ax = phantom.energy_axis
    s, dec = hyperspy_route.decompose(cube, ax.offset_kev, ax.scale_kev)
    cells, auto = [], None
    for name, k in (("hyperspy", None), ("hyperspy k=true", n_phases)):
        labels, info = hyperspy_route.cluster(s, dec["components"], k)
        seconds = dec["decomposition_s"] + info["estimate_s"] + info["cluster_s"]
        times.setdefault(name, []).append(seconds)
        cells.append(f"{adjusted_rand_score(truth, labels.ravel()):.3f} (k={info['clusters']:d}, "
                     f"{dec['components']:d}c, {seconds:4.1f}s)")
        if k is None:
            auto = info
    return cells, auto


def quality(size: int, dose: float, analyzer, as_written_fractions, as_written_umap: bool) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from edx_adapters.synthetic import make_phantom

    phantom = make_phantom((size, size))
    truth = phantom.binned_labels(2).ravel()
    n_phases = len(phantom.phases)
    mcs = max(5, int(round(0.005 * truth.size)))
    print(f"\n## ARI at {size}x{size} scan pixels (binned {size // 2}x{size // 2}), {phantom.spectra.shape[1]} "
          f"channels, full dose {dose:g} counts/pixel; true phases {n_phases}")
    widths = (6, 16, 10, 16, 10, 24, 24)
    header = ("dose", "pca-gmm", "as written", "umap-hdbscan", "as written", "hyperspy", "hyperspy k=true")
    print(" | ".join(f"{c:>{w}}" for c, w in zip(header, widths)))
    times, subset = {}, None
    for fraction in FRACTIONS:
        cube = phantom.binned_counts(dose * fraction, 2, seed=int(fraction * 1000))
        row = [f"{fraction:6.0%}"]
        for workflow in ("pca-gmm", "umap-hdbscan"):
            result = ours(analyzer, workflow, cube, phantom)
            times.setdefault(workflow, []).append(result.fit_seconds)
            row.append(f"{adjusted_rand_score(truth, result.labels.ravel()):.3f} (k={result.n_clusters:d}, "
                       f"{result.fit_seconds:4.1f}s)")
            run_base = fraction in as_written_fractions and (workflow == "pca-gmm" or as_written_umap)
            if run_base:
                X = cube.reshape(-1, cube.shape[-1])
                labels, t = _timed(lambda: as_written(X, workflow, n_phases, mcs))
                times.setdefault(f"{workflow} as written", []).append(t)
                row.append(f"{adjusted_rand_score(truth, labels):.3f}")
            else:
                row.append("-")
        cells, auto = hyperspy_cells(cube, phantom, truth, n_phases, times)
        row.extend(cells)
        if auto["estimate_pixels"] < truth.size:
            subset = auto["estimate_pixels"]
        print(" | ".join(f"{c:>{w}}" for c, w in zip(row, widths)), flush=True)
    print(f"  hyperspy: k = clusters used, c = decomposition components kept (elbow + 1), time = the whole route"
          + (f"; k estimated on {subset} of {truth.size} pixels" if subset else ""))
    return times


def speed(size: int, dose: float, analyzer) -> None:
    from edx_adapters.synthetic import make_phantom

    phantom = make_phantom((size, size))
    cube = phantom.binned_counts(dose, 2, seed=7)
    more = cube + phantom.binned_counts(dose * 0.1, 2, seed=8)
    print(f"\n## Refit wall time at {size}x{size} scan pixels ({size // 2}x{size // 2} binned) x "
          f"{cube.shape[-1]} channels, after warm-up")
    mcs = max(5, int(round(0.005 * cube.shape[0] * cube.shape[1])))
    for workflow in ("pca-gmm", "umap-hdbscan"):
        cold = ours(analyzer, workflow, cube, phantom)
        init = cold.warm_start.get("embedding") if cold.warm_start else None
        warm = ours(analyzer, workflow, more, phantom, init=init)
        X = cube.reshape(-1, cube.shape[-1])
        _, base = _timed(lambda: as_written(X, workflow, len(phantom.phases), mcs))
        live = warm.fit_seconds if init is not None else cold.fit_seconds
        print(f"  {workflow:13s} cold {cold.fit_seconds:6.2f} s  live (warm-started) {live:6.2f} s  "
              f"as written {base:7.2f} s  ratio as-written/live {base / live:6.1f}x", flush=True)


def convergence(size: int, dose: float, frames: int, settings) -> None:
    from sklearn.metrics import adjusted_rand_score

    from edx_adapters.synthetic import make_phantom
    from edx_protocol import Start

    from edx_live.pipeline.refit import Analyzer
    from edx_live.core.snapshot import Snapshot

    phantom = make_phantom((size, size))
    truth = phantom.binned_labels(2).ravel()
    analyzer = Analyzer(settings)
    start = Start(acquisition_id=f"bench-{size}", seq=0, **phantom.start_fields(frames, dose))
    ax = phantom.energy_axis
    cube = None
    history = {w: [] for w in settings.refit.workflows}
    for frame in range(frames):
        sweep = phantom.binned_counts(dose / frames, 2, seed=100 + frame)
        cube = sweep.astype(np.uint64) if cube is None else cube + sweep
        snap = Snapshot(start, cube, 2, ax.offset_kev, ax.scale_kev, frame + 1, int(cube.sum()), frame, False)
        for header, arrays in analyzer(snap):
            if header.kind != "clusters":
                continue
            labels = arrays["labels"].astype(np.int64).ravel()
            history[header.workflow].append({
                "frame": frame + 1, "converged": header.converged, "ids": [c.label for c in header.clusters],
                "changes": len(header.appeared if frame else []) + len(header.vanished),
                "ari": adjusted_rand_score(truth, labels), "seconds": header.refit_s})
    print(f"\n## Convergence over a {frames}-sweep acquisition at {size}x{size}, {dose:g} counts/pixel, "
          f"a refit after every sweep; rule: {analyzer._convergence['pca-gmm'].criterion}")
    for workflow, rows in history.items():
        first = next((r for r in rows if r["converged"]), None)
        trail = " ".join(f"{r['ari']:.2f}{'*' if r['converged'] else ''}" for r in rows)
        print(f"  {workflow:13s} ARI per refit (* = converged): {trail}")
        if first is None:
            print(f"  {workflow:13s} never converged")
            continue
        after = [r for r in rows if r["frame"] > first["frame"]]
        changes = sum(r["changes"] for r in after)
        flips = sum(1 for a, b in zip([first] + after, after) if a["ids"] != b["ids"])
        print(f"  {workflow:13s} converged at refit {first['frame']} of {frames} ({first['frame'] / frames:.0%} of "
              f"the dose), ARI then {first['ari']:.3f}; after it: {changes} clusters appeared/vanished, "
              f"{flips} refits with a changed id set; converged in {sum(r['converged'] for r in after)} of "
              f"{len(after)} later refits")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--dose", type=float, default=200.0, help="full dose, counts per scan pixel")
    parser.add_argument("--frames", type=int, default=20, help="sweeps of the convergence run")
    parser.add_argument("--quick", action="store_true", help="128x128 only, no convergence run")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    from edx_live.pipeline.refit import Analyzer
    from edx_live.config import load_settings
    from edx_live.logs import configure
    from edx_live.segment import warm_up

    configure(level="warning")
    settings = load_settings()
    analyzer = Analyzer(settings)
    print(f"warm-up (numba compilation) {warm_up(settings.umap_hdbscan.random_state):.1f} s")
    sizes = [128] if args.quick else args.sizes
    bar = progress(total=len(sizes) + 1 + (0 if args.quick else len(sizes)), desc="segmentation", unit="part")
    for size in sizes:
        big = size >= 512
        # As written at 512: UMAP on 65536 x 2048 raw channels takes minutes; run it at two doses.
        quality(size, args.dose, analyzer, (0.25, 1.0) if big else FRACTIONS, as_written_umap=True)
        bar.update()
    speed(max(sizes), args.dose, analyzer)
    bar.update()
    if not args.quick:
        for size in sizes:
            convergence(size, args.dose, args.frames, settings)
            bar.update()
    bar.close()


if __name__ == "__main__":
    main()
