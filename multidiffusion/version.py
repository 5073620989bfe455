"""The package version (its own module, so nothing imports the package root for it)."""

__version__ = "0.1.0"
