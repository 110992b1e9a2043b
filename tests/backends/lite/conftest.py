"""Fixtures for the lite backend tests: a real portrait (the example astronaut, cropped to head
and shoulders), a registered avatar, and synthetic speech-like audio."""

from __future__ import annotations

import numpy as np
import pytest

from ditto import SAMPLE_RATE_HZ
from ditto.backends.lite import LiteBackend, MotionTuning
from tests.conftest import astronaut

PORTRAIT_SIZE = 384


def portrait(size: int = PORTRAIT_SIZE) -> np.ndarray:
    import cv2

    crop = astronaut(512)[10:270, 94:354]
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))


def vowel(seconds: float, level: float = 0.4, f0_hz: float = 140.0, formants=(750, 1200, 2600)) -> np.ndarray:
    """A sustained harmonic vowel (formant-weighted harmonics), float32 at 16 kHz."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    wave = np.zeros_like(t)
    for h in range(1, 30):
        f = h * f0_hz
        if f > 5000:
            break
        gain = sum(1.0 / (1.0 + ((f - fm) / (80 + 0.06 * fm)) ** 2) for fm in formants)
        wave += gain * np.sin(2 * np.pi * f * t)
    return (wave / np.abs(wave).max() * level).astype(np.float32)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Syllables (4-6 per second, random vowels) in phrases separated by pauses."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SAMPLE_RATE_HZ), np.float32)
    vowels = [(750, 1200, 2600), (300, 2300, 3000), (320, 800, 2400), (500, 1900, 2600)]
    t = 0.2
    while t < seconds - 0.4:
        for _ in range(int(rng.integers(3, 7))):
            dur = float(rng.uniform(0.14, 0.24))
            if t + dur > seconds:
                break
            syl = vowel(
                dur, float(rng.uniform(0.25, 0.5)), float(rng.uniform(110, 180)), vowels[int(rng.integers(len(vowels)))]
            )
            env = np.sin(np.pi * np.linspace(0, 1, len(syl))) ** 0.7
            start = int(t * SAMPLE_RATE_HZ)
            out[start : start + len(syl)] += syl * env.astype(np.float32)
            t += dur + float(rng.uniform(0.0, 0.05))
        t += float(rng.uniform(0.4, 0.8))
    return out


@pytest.fixture(scope="session")
def backend() -> LiteBackend:
    return LiteBackend()


@pytest.fixture(scope="session")
def still_backend() -> LiteBackend:
    """No head sway, so pixel comparisons with the source isolate the mouth."""
    return LiteBackend(motion_tuning=MotionTuning(sway_roll_deg=0.0, sway_shift=0.0, speech_nod=0.0))


@pytest.fixture(scope="session")
def source_image() -> np.ndarray:
    return portrait()


@pytest.fixture(scope="session")
def avatar(backend, source_image):
    return backend.register_source(source_image)


@pytest.fixture(scope="session")
def still_avatar(still_backend, source_image):
    return still_backend.register_source(source_image)
