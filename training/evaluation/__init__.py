"""Evaluation protocols: LFW verification (View 2) and retrieval on unseen classes."""
