"""Catalogue database and FAISS index versions for imgsim."""
