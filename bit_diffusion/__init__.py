"""Bit Diffusion: discrete data generated with continuous diffusion models on analog bits."""
