"""Real-time talking-head streaming around Ditto (antgroup/ditto-talkinghead).

Data flows one way: audio in -> features -> motion -> frames -> JPEG -> socket.
``ditto.protocol`` holds the wire format (no I/O), ``ditto.media`` decodes user
input, ``ditto.backends`` animate a portrait, ``ditto.server`` and ``ditto.client``
move bytes.
"""

__version__ = "0.1.0"

FPS = 25
"""Video frame rate of every backend (Ditto is trained at 25 fps)."""

SAMPLE_RATE_HZ = 16_000
"""Sample rate every backend consumes (HuBERT's and the lite analyser's)."""

SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // FPS  # 640


def frames_for_samples(n_samples_16k: int) -> int:
    """Video frames that 16 kHz audio of this length drives: ceil(n / 640), i.e. ceil(duration * 25)."""
    return -(-int(n_samples_16k) // SAMPLES_PER_FRAME)
