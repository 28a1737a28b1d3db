"""Skip96 beta-VAE anomaly bundle: the code the configs reference by ``_target_``.

Importing the package changes nothing global; the configs' ``initialize`` installs the one-line error report
(``scripts.errors``) for the command line.
"""

from pathlib import Path

BUNDLE_ROOT = str(Path(__file__).resolve().parents[1])
