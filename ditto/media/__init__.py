"""Decoding and checking what users send: audio, images, file paths; JPEG encoding."""
