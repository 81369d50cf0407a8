"""Image captioning with Bit Diffusion (paper Sec. 4.3), and its autoregressive baseline."""
