"""Quantification: accuracy on overlapping lines, calibration of the uncertainty, the real core/shell
cores against HyperSpy's own quantification of the same pixels, and the time per refit.

    .venv/bin/python bench/quantify.py            # everything, ~3 min
    .venv/bin/python bench/quantify.py --quick    # fewer repetitions

Timings are reported beside a reference measured in the same run (exspy's own model
fit of the same spectra), because these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np

#: Known, unequal k-factors the synthetic spectra are built with.
K = {"Ag_La": 2.95, "Cd_La": 3.10, "Fe_Ka": 1.45, "Mn_Ka": 1.40, "Cr_Ka": 1.32, "Mo_La": 3.3, "S_Ka": 1.05}
CLUSTERS = {
    "Ag-Cd (Ag L / Cd L)": ({"Ag": 65.0, "Cd": 35.0}, ("Ag_La", "Cd_La")),
    "Fe-Mn-Cr (Mn Kb / Fe Ka, Cr Kb / Mn Ka)": ({"Fe": 72.0, "Mn": 18.0, "Cr": 10.0}, ("Cr_Ka", "Fe_Ka", "Mn_Ka")),
    "MoS2 (S K / Mo L)": ({"Mo": 100 / 3, "S": 200 / 3}, ("Mo_La", "S_Ka")),
}
CORE_SHELL_K = {"Fe_Ka": 1.450226, "Pt_La": 5.075602}


def _setup(lines, **kw):
    from edx_live.quantify import Geometry, Setup

    return Setup(0.0, 0.01, 2048, Geometry(200.0, 35.0, 0.0, 130.0), tuple(sorted(lines)),
                 {line: K[line] for line in lines}, **kw)


def accuracy(repeats: int) -> None:
    from edx_adapters.synthetic import phase_spectrum
    from edx_live.quantify import ClusterQuantifier, QuantifyOptions

    print("\n## Synthetic clusters, known compositions and k-factors (at%): error of the model fit and of windows")
    print(f"{repeats} Poisson draws per row; bias = mean error, rms = root mean square error, "
          "cover = share within +-2 sigma\n")
    print("| cluster | counts | path | element | truth | bias | rms | mean sigma | cover |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    paths = {"model": ClusterQuantifier(QuantifyOptions(calibrate=(), bootstrap=0)),
             "windows": ClusterQuantifier(QuantifyOptions(intensities="windows", bootstrap=0))}
    for name, (comp, lines) in CLUSTERS.items():
        truth = {e: 100 * v / sum(comp.values()) for e, v in comp.items()}
        for counts in (1e5, 3e5, 1e6):
            mean = phase_spectrum(comp, lines, counts, kfactors=K)
            draws = rng.poisson(mean, size=(repeats, mean.size)).astype(float)
            for path, quantifier in paths.items():
                err, sig = [], []
                for r in range(repeats):
                    q = quantifier(draws[r:r + 1], np.zeros(1, int), 1, _setup(lines), random_state=r)
                    err.append(q.atomic_percent[0] - [truth[e] for e in q.elements])
                    sig.append(q.atomic_percent_sigma[0])
                err, sig = np.array(err), np.array(sig)
                for j, element in enumerate(q.elements):
                    print(f"| {name} | {counts:.0e} | {path} | {element} | {truth[element]:.1f} | "
                          f"{err[:, j].mean():+.2f} | {np.sqrt((err[:, j] ** 2).mean()):.2f} | "
                          f"{sig[:, j].mean():.2f} | {np.mean(np.abs(err[:, j]) <= 2 * sig[:, j]):.2f} |")


def calibration(repeats: int) -> None:
    from edx_adapters.synthetic import phase_spectrum
    from edx_live.quantify import ClusterQuantifier, QuantifyOptions

    print("\n## Calibration: clusters of 300 Poisson pixels, counting replicas + pixel bootstrap")
    rng = np.random.default_rng(1)
    lines = ("Ag_La", "Cd_La", "Cr_Ka", "Fe_Ka", "Mn_Ka")
    comps = [CLUSTERS[n][0] for n in list(CLUSTERS)[:2]]
    quantifier = ClusterQuantifier(QuantifyOptions(calibrate=()))
    z = []
    for rep in range(repeats):
        cube = np.concatenate([rng.poisson(phase_spectrum(c, [x for x in lines if x.partition("_")[0] in c],
                                                          1e5 / 300, kfactors=K), size=(300, 2048)) for c in comps])
        q = quantifier(cube, np.repeat([0, 1], 300), 2, _setup(lines), random_state=rep)
        for k, comp in enumerate(comps):
            truth = np.array([100 * comp.get(e, 0.0) / sum(comp.values()) for e in q.elements])
            z.extend((q.atomic_percent[k] - truth) / q.atomic_percent_sigma[k])
    z = np.abs(np.array(z))
    print(f"{len(z)} element-cluster cases: within 1 sigma {np.mean(z <= 1):.3f} (normal: 0.683), "
          f"within 2 sigma {np.mean(z <= 2):.3f} (normal: 0.954; target >= 0.90)")


def core_shell() -> None:
    """Both workflows' core cluster against HyperSpy's own quantification of the same (hard-mask) pixels."""
    import tempfile

    import hyperspy.api as hs

    from edx_live.config import load_settings
    from edx_live.shell.demo import bundled_dataset
    from edx_live.shell.offline import process_file

    print("\n## core_shell.hspy: the FePt cores, Fe_Ka 1.450226, Pt_La 5.075602 (at%, 1 sigma)")
    settings = load_settings(overrides={"quantify": {"kfactors": CORE_SHELL_K}, "log_level": "warning"})
    with tempfile.TemporaryDirectory() as out:
        summary = process_file(bundled_dataset(), out, settings)
        original = hs.load(bundled_dataset())
        binned = original.rebin(scale=(2, 2, 1))
        print("| workflow | pixels | edx_live (model, membership) | sigma counting / spread | "
              "HyperSpy model fit, same pixels and range | same from 0.2 keV | HyperSpy windows, same pixels |")
        print("|---|---|---|---|---|---|---|")
        for workflow, wf in summary["workflows"].items():
            core = max(wf["clusters"], key=lambda c: c["composition"]["Pt"]["atomic_percent"] or 0.0)
            labels = hs.load(f"{out}/labels_{workflow}.hspy").data
            spectrum = hs.signals.Signal1D(binned.data[labels == core["label"]].sum(axis=0))
            spectrum = _like(original, spectrum)
            fe, pt = core["composition"]["Fe"], core["composition"]["Pt"]
            low, high = (float(v) for v in wf["fit"]["range"].split()[0].split(".."))
            model = _hyperspy_model(spectrum, wf["fit"]["elements"], low, high)
            wide = _hyperspy_model(spectrum, wf["fit"]["elements"], 0.2, high)
            windows = _hyperspy_windows(spectrum)
            print(f"| {workflow} | {core['pixels']} | Fe {fe['atomic_percent']:.1f} +- {fe['atomic_percent_sigma']:.1f}, "
                  f"Pt {pt['atomic_percent']:.1f} | {fe['atomic_percent_sigma_counting']:.2f} / "
                  f"{fe['atomic_percent_sigma_spread']:.2f} | Fe {model[0]:.1f}, Pt {model[1]:.1f} | "
                  f"Fe {wide[0]:.1f}, Pt {wide[1]:.1f} | "
                  f"Fe {windows[0]:.1f}, Pt {windows[1]:.1f} |")
            print(f"   fit: {wf['fit']}")


def _like(original, spectrum):
    """``spectrum`` (a plain Signal1D) as an EDSTEMSpectrum with the original's axis and metadata."""
    s = original.sum()
    s.data = spectrum.data.astype(float)
    return s


def _hyperspy_model(s, elements, low: float, high: float) -> list[float]:
    """HyperSpy/exspy's documented model route: create_model, fit, calibrate the resolution, fit, quantify."""
    s = s.deepcopy()
    if "Sample.xray_lines" in s.metadata:
        del s.metadata.Sample.xray_lines  # else create_model adds the families of these lines only
    s.set_elements(list(elements))
    m = s.isig[low:high].create_model()
    m.fit()
    m.calibrate_energy_axis("resolution")
    m.fit()
    intensities = m.get_lines_intensity(xray_lines=["Fe_Ka", "Pt_La"])
    result = s.quantification(intensities, "CL", factors=list(CORE_SHELL_K.values()))
    return [float(np.ravel(r.data)[0]) for r in result]


def _hyperspy_windows(s) -> list[float]:
    s = s.deepcopy()
    s.set_elements(["Fe", "Pt"])
    s.add_lines()
    intensities = s.get_lines_intensity(background_windows=s.estimate_background_windows(line_width=[5.0, 2.0]))
    result = s.quantification(intensities, "CL", factors=list(CORE_SHELL_K.values()))
    return [float(np.ravel(r.data)[0]) for r in result]


def timing() -> None:
    """Quantifying every cluster of one refit at 256 x 256 binned pixels, cold (model built) and warm."""
    from edx_adapters.synthetic import make_phantom
    from edx_live.quantify import ClusterQuantifier, Geometry, QuantifyOptions, Setup
    from edx_live.quantify.signal import axis, eds_signal

    print("\n## Time to quantify all clusters of one refit (2 shared cores)")
    print("| scan (binned) | clusters | channels | elements (fit-only) | first refit (model built) | "
          "later refits | exspy model build + multifit of the cluster sums alone, same run |")
    print("|---|---|---|---|---|---|---|")
    for shape, channels in (((128, 128), 2048), ((256, 256), 2048), ((256, 256), 4096)):
        phantom = make_phantom(shape, channels=channels, scale_kev=20.48 / channels, seed=0)
        cube = phantom.binned_counts(200.0, 1, seed=0)
        labels = phantom.labels.copy()
        labels[:8, :] = np.arange(8)[:, None] % 8 + 4  # four small extra clusters: 8 in all
        n = int(labels.max()) + 1
        setup = Setup(0.0, 20.48 / channels, channels, Geometry(200.0, 35.0, 0.0, 130.0),
                      tuple(sorted(phantom.xray_lines)), {line: 1.0 for line in phantom.xray_lines})
        quantifier = ClusterQuantifier(QuantifyOptions())
        confidence = np.full(labels.shape, 0.9)
        t0 = time.perf_counter()
        quantifier(cube, labels, n, setup, weights=confidence, random_state=0)
        cold = time.perf_counter() - t0
        warm = []
        for r in range(3):
            t0 = time.perf_counter()
            quantifier(cube, labels, n, setup, weights=confidence, random_state=r)
            warm.append(time.perf_counter() - t0)
        sums = np.stack([cube[labels == k].sum(axis=0) for k in range(n)]).astype(float)
        t0 = time.perf_counter()
        s = eds_signal(sums, 0.0, 20.48 / channels, 200.0, navigation_axes=[axis("cluster", n)],
                       energy_resolution_ev=130.0)
        s.set_elements(phantom.elements)
        m = s.isig[0.2:quantifier.model_.key.fit_range_kev[1]].create_model(auto_background=False)
        m.add_polynomial_background(6)
        m.multifit(optimizer="lstsq")
        reference = time.perf_counter() - t0
        print(f"| {shape[0]}x{shape[1]} | {n} | {channels} | {len(setup.xray_lines)} | {cold:.2f} s | "
              f"{np.median(warm):.2f} s | {reference:.2f} s (x{np.median(warm) / reference:.2f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("hyperspy").setLevel(logging.ERROR)
    from edx_live.logs import configure

    configure(level="warning")
    accuracy(5 if args.quick else 20)
    calibration(5 if args.quick else 40)
    core_shell()
    timing()


if __name__ == "__main__":
    main()
