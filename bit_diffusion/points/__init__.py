"""Points in the plane as integers: DisCo-Diff's toy (8 Gaussians), its data, metrics and modes."""
