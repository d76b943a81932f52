"""Veridical (PCS) layer: perturbation grids, stability, computability and reproducibility."""
