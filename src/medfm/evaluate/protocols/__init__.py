"""Evaluation protocols: linear probe, kNN, fine-tune with layer-wise learning-rate decay, few-shot."""
