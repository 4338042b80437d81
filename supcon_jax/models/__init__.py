"""Encoders (ResNet v1.5, ViT), heads, and the SupCon model built from config.model by name."""
from supcon_jax.models.model import ENCODERS, SupConModel, build_encoder, build_model, validate

__all__ = ["ENCODERS", "SupConModel", "build_encoder", "build_model", "validate"]
