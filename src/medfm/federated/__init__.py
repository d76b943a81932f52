"""Federated learning on medical tasks, simulated with clients that each hold some subjects' data."""
