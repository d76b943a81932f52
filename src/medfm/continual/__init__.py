"""Continual learning of a medical foundation model (work in progress)."""
