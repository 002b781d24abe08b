"""Metric learning for imgsim: embedding networks, losses, miners, samplers, training, evaluation."""
