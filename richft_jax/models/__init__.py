"""Backbones, the classifier (backbone -> feature dropout -> linear head) and weight loading."""
