"""Sphinx configuration for the astroinfer documentation (Sphinx + MyST markdown).

Build with warnings as errors, as ``tests/test_docs.py`` does::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))  # local extension: tables and help generated from the code

import astroinfer  # noqa: E402  (installed with `pip install -e .`)

project = "astroinfer"
author = "the astroinfer developers"
copyright = "the astroinfer developers"
release = astroinfer.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "astroinfer_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# Docstrings are NumPy style; attributes become fields of the class, not separate entries.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": False}

html_theme = "alabaster"
html_title = f"astroinfer {release}"
html_static_path = []
