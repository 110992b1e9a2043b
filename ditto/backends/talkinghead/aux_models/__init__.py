"""Auxiliary models of avatar registration and audio features.

``face_detector`` (SCRFD), ``landmarks`` (106/203 points + similarity crops),
``face_mesh`` (478-point mesh, eye info) and ``hubert`` (streaming audio
features). Each wrapper takes a runner (``runner(**tensors) -> dict``) and owns
the exact upstream pre/post-processing; none of them holds pipeline logic.
"""
