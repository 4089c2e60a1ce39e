"""edx_live: live segmentation and quantification of STEM-EDX spectrum images.

The package is laid out by concern:

- ``core``: pure ingest state and the accumulated spectrum image (no sockets);
- ``segment``: the two clustering workflows as scikit-learn-style estimators;
- ``quantify``: cluster spectra to compositions with exspy;
- ``shell``: ZeroMQ transports, background refits, publishers, session folders (the only I/O);
- ``export``: the session folder: HyperSpy signals, compositions as JSON/CSV, the report;
- ``view``: the web viewer (needs only the protocol and Bokeh);
- ``colours``: the colour of a cluster id, shared by the viewer and the report.
"""

__version__ = "0.1.0"

import os as _os

# UMAP's parallel numba kernels run on a refit thread while the warm-up, or another refit's, may run
# on another. numba's fallback "workqueue" threading layer aborts the process on such concurrent use;
# "threadsafe" takes OpenMP (Debian's libgomp1) or TBB (pip install tbb) and, when neither is there,
# fails that one refit with numba's message instead of killing the service. Set before numba is imported.
_os.environ.setdefault("NUMBA_THREADING_LAYER", "threadsafe")
