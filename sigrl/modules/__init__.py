"""The SigRL head and its parts: GMC (label graph), SVFR (reconstruction), matching."""
