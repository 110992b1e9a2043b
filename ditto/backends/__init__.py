"""Animator backends behind one narrow interface (:mod:`ditto.backends.base`)."""
