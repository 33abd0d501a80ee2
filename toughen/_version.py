"""The package version (also in pyproject.toml): a leaf, so that any module can record it."""

__version__ = "0.1.0"
