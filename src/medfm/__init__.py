"""medfm: a toolkit for the whole life of a medical foundation model."""

__version__ = "0.1.0"
