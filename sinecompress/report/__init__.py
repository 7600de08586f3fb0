"""Looking at what compression did: spectra and ranks, per-layer reports, ω sweeps, plots."""
