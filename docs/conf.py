"""Sphinx configuration of jkp's documentation (MyST Markdown, the PyData theme as the Jupyter
projects use it). Build it with ``scripts/docs``."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import autogen_config  # noqa: E402  (beside this file)

from jkp._version import __version__  # noqa: E402

# The option reference is written from the traits on every build, so it cannot drift from them.
autogen_config.write(HERE / autogen_config.PAGE)

project = "jkp"
author = "jkp contributors"
copyright = "jkp contributors"
version = release = __version__

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# `page.md#a-heading` links, as GitHub renders the same pages.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

html_theme = "pydata_sphinx_theme"
html_title = "jkp"
# Options, flags and code in prose stay as typed (no curly quotes, "--" is not a dash).
smartquotes = False
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# The pages are one flat list in the header: no section sidebar to show.
html_sidebars = {"**": []}
