"""Downstream evaluation: tasks, protocols, metrics with confidence intervals, reports."""
