"""Miners: in-batch tuple miners and dataset-wide hard-negative mining."""
