"""Live terminal dashboard for ``p2pgan scenario run`` (rich).

* :class:`DashboardState` -- pure bookkeeping, fed every event (O(1) per event);
* :func:`render` -- pure function of a :class:`Snapshot` to a rich renderable;
* :class:`LiveView` -- the observer that owns a ``rich.live.Live`` refreshed at a bounded rate.
"""

from p2pgan.ui.live.rendering import render
from p2pgan.ui.live.state import (
    D_WIN_LOSS,
    D_WIN_STEPS,
    FAKE_STD_MIN,
    G_COLLAPSE_LOSS,
    G_COLLAPSE_STEPS,
    DashboardState,
    SimulatedClockEvent,
    Snapshot,
)
from p2pgan.ui.live.view import LiveView

__all__ = [
    "D_WIN_LOSS", "D_WIN_STEPS", "FAKE_STD_MIN", "G_COLLAPSE_LOSS", "G_COLLAPSE_STEPS",
    "DashboardState", "LiveView", "SimulatedClockEvent", "Snapshot", "render",
]
