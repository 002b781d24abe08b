"""Embedding networks: backbones, the ModelSpec they are built from, ensembles, the Embedder."""
