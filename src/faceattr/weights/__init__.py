"""Weights that ship with faceattr (see MODEL_CARD.md); loaded by Predictor.from_pretrained."""
