"""Skip96 beta-VAE anomaly bundle: the code the configs reference by ``_target_``.

Importing the package makes the bundle's own input errors print as one line (``scripts.errors``).
"""

from pathlib import Path

from .errors import install as install_one_line_errors

BUNDLE_ROOT = str(Path(__file__).resolve().parents[1])

install_one_line_errors()
