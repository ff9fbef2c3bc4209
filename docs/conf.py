"""Sphinx configuration of the documentation site: Markdown pages (myst-parser) and the
tables generated from the code (``_ext/advrobust_tables.py``). Built by ``make docs``
with warnings as errors; nothing is fetched from the network (no intersphinx)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "_ext"), str(HERE.parent)]

import pytest_advrobust  # noqa: E402

project = "pytest-advrobust"
author = "pytest-advrobust maintainers"
release = version = pytest_advrobust.__version__

extensions = ["myst_parser", "advrobust_tables"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
myst_heading_anchors = 4  # links to sections by their slug: page.md#the-section-title
nitpicky = True
html_theme = "alabaster"
html_theme_options = {"nosidebar": False}
html_static_path: list[str] = []
