"""Results written for HyperSpy and for people: an acquisition's session folder.

- :mod:`.signals`: the spectrum image, image, label and confidence maps, cluster spectra as HyperSpy signals;
- :mod:`.tables`: compositions as the published JSON document and as CSV;
- :mod:`.report`: ``report.png``, one page for a lab notebook;
- :mod:`.facts`: acquisition facts, main settings and software versions, as small mappings;
- :mod:`.session`: :func:`write_session`, the whole folder, written at every acquisition stop
  and by ``edx-live process``.
"""

from .facts import acquisition_facts, main_settings, software_versions
from .report import draw_report, write_report
from .session import write_outputs, write_session
from .signals import (cluster_spectra_signal, confidence_signal, image_signal, labels_signal,
                      spectrum_image_signal)
from .tables import CSV_COLUMNS, write_composition_csv, write_composition_json

__all__ = ["CSV_COLUMNS", "acquisition_facts", "cluster_spectra_signal", "confidence_signal", "draw_report",
           "image_signal", "labels_signal", "main_settings", "software_versions", "spectrum_image_signal",
           "write_composition_csv", "write_composition_json", "write_outputs", "write_report", "write_session"]
