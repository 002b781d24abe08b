"""Labelled images: folders, dataset formats with their splits, transforms."""
