"""The embedded default animator ("lite"): no weights, CPU only, real time.

Speech energy and spectral shape drive a mesh warp of the source portrait: jaw and lips
follow the syllables, the mouth shows a dark interior with a hint of teeth when open and
closes in silence, the eyes blink every few seconds and the head sways a little. Only a
face region is touched. Modules, one job each:

* :mod:`.landmarks` - mediapipe face mesh once per source, landmark index groups
* :mod:`.geometry`  - face ROI, face frame, Delaunay mesh with fixed border anchors
* :mod:`.warp`      - exact piecewise-affine inverse warp -> dense remap table
* :mod:`.speech`    - 25 fps speech features -> smoothed mouth parameters (look-ahead)
* :mod:`.motion`    - rig bases, blinks, head sway -> target mesh
* :mod:`.compositor` - remap of the ROI, inner mouth, frame assembly
* :mod:`.backend`   - :class:`LiteBackend`, :class:`LiteAvatar`, :class:`LiteStream`
"""

from ditto.backends.lite.backend import LiteAvatar, LiteBackend, LiteStream
from ditto.backends.lite.motion import MotionTuning
from ditto.backends.lite.speech import LOOKAHEAD_FRAMES, MouthTuning

__all__ = ["LOOKAHEAD_FRAMES", "LiteAvatar", "LiteBackend", "LiteStream", "MotionTuning", "MouthTuning"]
