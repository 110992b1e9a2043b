"""A small LRU cache of registered portraits: a second session with the same image skips
registration (face analysis, and for Ditto the crop and feature extraction)."""

from __future__ import annotations

import collections
import hashlib
import threading

import numpy as np

from ditto.backends.base import AnimatorBackend, Avatar


class AvatarCache:
    def __init__(self, backend: AnimatorBackend, capacity: int = 8) -> None:
        self._backend = backend
        self._capacity = capacity
        self._items: collections.OrderedDict[str, Avatar] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get_or_register(self, image_rgb: np.ndarray) -> Avatar:
        """The avatar for this exact image (same pixels), registering it on first sight."""
        key = hashlib.sha256(image_rgb.tobytes()).hexdigest() + f":{image_rgb.shape}"
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        avatar = self._backend.register_source(image_rgb)  # outside the lock: may take seconds
        with self._lock:
            self._items[key] = avatar
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return avatar
