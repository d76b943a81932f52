"""Continual learning of a medical foundation model: one pretrained trunk adapted to a stream of
experiences (new sites, resolutions, modalities, tasks or classes) by strategies that plug into the
training engine, scored after every step on every experience (the result matrix R[i, j]) and summarised
by accuracy, forgetting and transfer with subject-bootstrap intervals. ``medfm continual --config``."""
