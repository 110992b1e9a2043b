"""A small LRU cache of registered portraits: a second session with the same image skips
registration (face analysis, and for Ditto the crop and feature extraction).

A portrait is registered once even when several sessions bring it at the same time: the
first registers it, the others wait for that registration and get its avatar, or the error
it raised (nothing is cached then, so a later session tries again).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import threading

import numpy as np

from ditto.backends.base import AnimatorBackend, Avatar


class AvatarCache:
    def __init__(self, backend: AnimatorBackend, capacity: int = 8) -> None:
        self._backend = backend
        self._capacity = capacity
        self._items: collections.OrderedDict[str, Avatar] = collections.OrderedDict()
        self._pending: dict[str, concurrent.futures.Future[Avatar]] = {}  # registrations under way
        self._lock = threading.Lock()
        self.hits = 0

    def get_or_register(self, image_rgb: np.ndarray) -> Avatar:
        """The avatar for this exact image (same pixels), registering it on first sight.

        Blocks while another thread registers the same image. Raises what the registration raised.
        """
        key = hashlib.sha256(image_rgb.tobytes()).hexdigest() + f":{image_rgb.shape}"
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            registering = self._pending.get(key)
            waiting = registering is not None
            if registering is not None:
                self.hits += 1
            else:
                registering = self._pending[key] = concurrent.futures.Future()
        if waiting:
            return registering.result()
        try:
            avatar = self._backend.register_source(image_rgb)  # outside the lock: may take seconds
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            registering.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            self._items[key] = avatar
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        registering.set_result(avatar)
        return avatar
