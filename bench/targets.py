"""Follow-up targets drawn over the cluster maps: the bundled FePt data and a synthetic sample with known truth.

python bench/targets.py [--workflows pca-gmm umap-hdbscan] [--out docs]

Each acquisition is analysed once, from all its counts, by the real Analyzer (both workflows,
then quantification); the targets come from ``edx_live.suggest.follow_up_targets`` on the
published documents. Writes ``targets_fept.png`` and ``targets_synthetic.png`` and prints
each target: rank, score, reasons, box in scan pixels, workflows, dose.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

#: The demo's k-factors for the bundled FePt core-shell data.
FEPT_KFACTORS = {"Fe_Ka": 1.450226, "Pt_La": 5.075602}
BIN = 2


def fept_snapshot():
    """(start, snapshot) of the bundled core_shell.hspy, every sweep accumulated."""
    from edx_adapters.replay import open_replay

    from edx_live.core.snapshot import Snapshot
    from edx_live.shell.demo import bundled_dataset

    replay = open_replay(bundled_dataset())
    start = replay.start
    rows, columns = start.scan_shape
    cube = np.zeros((rows * columns, start.energy_axis.channels), dtype=np.uint32)
    frames = set()
    for header, arrays in replay.messages():
        if header.kind == "frame" and header.payload == "dense":
            counts = arrays["counts"]
            cube[header.pixel_start:header.pixel_start + len(counts)] += counts
            frames.add(header.frame_index)
    # The scan is 32 nm wide at 0.5 nm per pixel; the stage is where the file does not say: the geometry
    # fields show what a controller would get.
    start = start.model_copy(update={"field_of_view_m": columns * start.pixel_size * 1e-9, "scan_rotation_rad": 0.0})
    binned = cube.reshape(rows // BIN, BIN, columns // BIN, BIN, -1).sum(axis=(1, 3), dtype=np.uint64)
    ax = start.energy_axis
    snapshot = Snapshot(start, binned, BIN, ax.offset_kev, ax.scale_kev, len(frames), int(cube.sum()), 0, True,
                        elapsed_s=float(len(frames)))
    return start, snapshot, None


def synthetic_snapshot(seed: int = 3, dose: float = 200.0, frames: int = 10):
    """(start, snapshot, phantom) of the default four-phase phantom at 128 x 128."""
    from edx_adapters.synthetic import make_phantom
    from edx_protocol import Start

    from edx_live.core.snapshot import Snapshot

    phantom = make_phantom((128, 128), channels=512, scale_kev=0.04, seed=seed)
    start = Start(acquisition_id=f"targets-synthetic-{seed}", seq=0, **phantom.start_fields(frames, dose),
                  pixel_size=1.0, pixel_unit="nm", dwell_time_s=2e-5, field_of_view_m=128e-9,
                  scan_rotation_rad=np.pi / 6)
    cube = phantom.binned_counts(dose, BIN, seed=seed)
    ax = phantom.energy_axis
    snapshot = Snapshot(start, cube, BIN, ax.offset_kev, ax.scale_kev, frames, int(cube.sum()), 0, True,
                        elapsed_s=frames * start.n_pixels * start.dwell_time_s)
    return start, snapshot, phantom


def analyse(start, snapshot, kfactors, workflows):
    """(maps, compositions, targets) of one refit of ``snapshot``."""
    from edx_live.config import load_settings
    from edx_live.pipeline.refit import Analyzer
    from edx_live.suggest import TargetOptions, follow_up_targets

    settings = load_settings(overrides={"refit": {"workflows": list(workflows)},
                                        "quantify": {"kfactors": kfactors, "replicas": 16, "bootstrap": 16}})
    documents = list(Analyzer(settings)(snapshot))
    maps = {h.workflow: (h, a) for h, a in documents if h.kind == "clusters"}
    compositions = {h.workflow: h for h, _ in documents if h.kind == "composition"}
    return maps, compositions, follow_up_targets(start, maps, compositions, TargetOptions())


def describe_targets(name: str, targets, phantom=None) -> None:
    print(f"{name}: {len(targets)} targets")
    for t in targets:
        truth = ""
        if phantom is not None:
            r0, c0, r1, c1 = t.box_px
            counts = np.bincount(phantom.labels[r0:r1, c0:c1].ravel(), minlength=len(phantom.phases))
            truth = "  truth: " + ", ".join(f"{phantom.phases[k].name} {n}" for k, n in enumerate(counts) if n)
        dose = "-" if t.sweeps is None else f"{t.sweeps:g} sweeps"
        offset = "" if t.centre_offset_m is None else (f"  offset ({t.centre_offset_m[0] * 1e9:+.1f}, "
                                                      f"{t.centre_offset_m[1] * 1e9:+.1f}) nm")
        print(f"  {t.rank}. score {t.score:.3f} {'+'.join(t.reasons)}  box {list(t.box_px)}  "
              f"{'/'.join(t.workflows)} {t.clusters}  {dose}{offset}{truth}")


def draw(path: Path, title: str, maps, targets, phantom=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    panels = list(maps.items()) + ([("truth", None)] if phantom is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (workflow, doc) in zip(axes[0], panels):
        if doc is None:
            image, extent = phantom.labels, None
        else:
            header, arrays = doc
            labels = arrays["labels"].astype(float)
            labels[labels == 65535] = np.nan
            image = labels
            rows, columns = labels.shape
            extent = (0, columns * header.bin_factor, rows * header.bin_factor, 0)
        ax.imshow(image, cmap="tab10", interpolation="nearest", extent=extent, vmin=0, vmax=9)
        for t in targets:
            r0, c0, r1, c1 = t.box_px
            mine = doc is None or workflow in t.workflows
            ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, lw=1.2,
                                   ec="white" if mine else "grey", ls="-" if mine else ":"))
            ax.text(c0 + 0.5, r0 - 0.5, str(t.rank), color="white", fontsize=7, va="bottom",
                    bbox=dict(fc="black", alpha=0.6, pad=0.5, lw=0))
        ax.set_title(workflow, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workflows", nargs="+", default=["pca-gmm", "umap-hdbscan"])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    start, snapshot, _ = fept_snapshot()
    maps, _, targets = analyse(start, snapshot, FEPT_KFACTORS, args.workflows)
    describe_targets("FePt core-shell (core_shell.hspy, 64 x 64, binned 2 x 2)", targets)
    draw(args.out / "targets_fept.png", "FePt core-shell: follow-up targets", maps, targets)
    start, snapshot, phantom = synthetic_snapshot()
    maps, _, targets = analyse(start, snapshot, dict(phantom.kfactors), args.workflows)
    describe_targets("synthetic four-phase phantom (128 x 128, 200 counts/pixel, seed 3)", targets, phantom)
    draw(args.out / "targets_synthetic.png", "synthetic phantom: follow-up targets (right: truth)", maps, targets,
         phantom)


if __name__ == "__main__":
    main()
