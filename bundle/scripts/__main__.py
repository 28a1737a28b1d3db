"""``python -m scripts ARGS`` runs ``python -m monai.bundle ARGS`` after importing this package first.

Importing ``scripts`` loads nvImageCodec with stderr silenced (see ``scripts/__init__.py``); MONAI would otherwise load
it itself and print "Failed to load nvjpeg" lines on machines without CUDA. The Makefile uses this for the demo, so
progress bars on stderr stay visible without filtering the stream.
"""

import runpy
import sys

import scripts  # noqa: F401  (the import is the point)

sys.argv[0] = "monai.bundle"
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
