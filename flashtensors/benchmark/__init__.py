"""Benchmarks behind ``flashtensors bench``: synthetic checkpoints, peer loaders, the
machine's ceilings, and the runner that times them side by side."""
