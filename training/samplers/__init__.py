"""Batch samplers: P x K and pairs, the class-tree (HTL) sampler, the hard-negative sampler."""
