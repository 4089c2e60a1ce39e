"""Readers that turn one kind of instrument file into frame chunks.

Each module offers ``load(path, frames, seed) -> Source``; the
file readers (rosettasciio, h5py) are imported inside those functions so that
importing :mod:`edx_adapters` stays light.
"""
