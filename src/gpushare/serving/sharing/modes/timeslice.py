"""timeslice: several servers on the GPU without MPS, under the driver's default time-slicing."""

from __future__ import annotations

from .. import SHARING_MODES, SharingMode


@SHARING_MODES.register("timeslice")
class Timeslice(SharingMode):
    pass
