"""Where one client's blocks run: a cut (head/tail blocks on the client, the rest on the server)
or ``full-local`` (every block of G and D on the client, FedAvg-GAN style: no activation traffic
during iterations, the whole model's parameters exchanged at round end)."""

from __future__ import annotations

from dataclasses import dataclass

from p2pgan.model.segments import ClientCut, ClientSplit, all_cut_options, split_client


@dataclass(frozen=True)
class Placement:
    cut: ClientCut | None
    """``None``: full-local."""

    @property
    def full_local(self) -> bool:
        return self.cut is None

    def split(self) -> ClientSplit:
        if self.cut is None:
            # The cut is ignored for a full-local split; any legal one gives the same segments.
            return split_client(all_cut_options()[-1], full_local=True)
        return split_client(self.cut)

    def __str__(self) -> str:
        return "full-local" if self.cut is None else str(self.cut)


FULL_LOCAL = Placement(None)


def cut_placements() -> tuple[Placement, ...]:
    """One placement per legal cut, in :func:`all_cut_options` order."""
    return tuple(Placement(cut) for cut in all_cut_options())
