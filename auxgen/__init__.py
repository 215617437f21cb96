"""auxgen: learned auxiliary labels (MAXL) for your data."""

__version__ = "0.1.0"
