"""edx_live: live segmentation and quantification of STEM-EDX spectrum images.

The package is laid out by concern:

- ``core``: pure ingest state and the accumulated spectrum image (no sockets);
- ``segment``: the two clustering workflows as scikit-learn-style estimators;
- ``quantify``: cluster spectra to compositions with exspy;
- ``shell``: ZeroMQ transports, background refits, publishers (the only I/O);
- ``export``: results written for HyperSpy.
"""

__version__ = "0.1.0"
