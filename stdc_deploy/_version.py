"""The package version, in a module of its own so that nothing depends on import order."""

__version__ = "0.2.0"
