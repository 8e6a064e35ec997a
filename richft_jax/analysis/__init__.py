"""Analyses of fine-tuned networks: linearisation, interpolation, feature distortion."""
