"""Text generation and infilling with Bit Diffusion (in progress: the corpus layer)."""
