"""Offline jobs: a queue in the catalogue DB, a worker, and the segmentation, visualization and clustering job kinds."""
