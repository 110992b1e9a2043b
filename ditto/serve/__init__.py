"""The streaming server past one GPU: Ray Serve replicas of the same app, routed by capacity.

Needs ``pip install -r requirements-serve.txt``; :mod:`.options` imports without Ray, the rest
imports ``ray.serve``. See ``docs/scaling.md``.
"""
