"""Graft: transfer learning for small image datasets."""
from graft.core import VERSION as __version__  # noqa: F401 (the package's version)
