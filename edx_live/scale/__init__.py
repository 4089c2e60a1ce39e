"""Scale: many sessions as Dask tasks, and scans larger than memory read and segmented chunk by chunk.

Nothing here is needed by the live service; ``edx-live process`` uses it for several inputs
(``batch``) and for ``--out-of-core`` files.
"""
