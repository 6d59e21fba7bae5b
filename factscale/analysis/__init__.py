"""Stage 6, result rows -> results -> fits: the results vocabulary (``vocab``: which rows each measure and law
uses), ``collect``, the laws (``laws``) and their fitter with run-level bootstrap intervals (``fit``), study
statistics (``studies``), the capacity table across papers (``capacity``) and weight quantization
(``quantize``). Imports the base, ``corpus``, ``probing`` and ``training``; never ``launch``."""
