"""Ditto pipeline stages: source registration, streaming audio-to-frames, and the DDIM sampler."""
