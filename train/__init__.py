"""Accelerate training for denoisers and segmenters."""
