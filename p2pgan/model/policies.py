"""The one table of named cut policies: how every client is cut when no search or list says.

The scenario's ``cuts.policy``, usplit-fedavg's default, the ``cuts`` command's reference plans
and what-if studies all read this table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR
from p2pgan.model.segments import ClientCut, all_cut_options, legal_cut_values


def extreme_cut(local: bool) -> ClientCut:
    """Every movable block on the server (``local=False``) or on the client (``local=True``)."""
    (gh, gt), (dh, dt) = legal_cut_values(GENERATOR), legal_cut_values(DISCRIMINATOR)
    pick = (lambda r: r[-1]) if local else (lambda r: r[0])
    return ClientCut(pick(gh), pick(gt), pick(dh), pick(dt))


@dataclass(frozen=True)
class CutPolicy:
    name: str
    description: str
    full_local: bool = False
    """Every block on the client; no server during iterations (a strategy's layout, not a cut)."""
    cycle: bool = False
    """Every legal cut in turn, client by client (the most heterogeneous plan)."""
    local: bool = False

    def cuts(self, client_ids: Sequence[str]) -> dict[str, ClientCut]:
        if self.cycle:
            options = all_cut_options()
            return {cid: options[i % len(options)] for i, cid in enumerate(client_ids)}
        cut = extreme_cut(local=self.local or self.full_local)
        return {cid: cut for cid in client_ids}


CUT_POLICIES: dict[str, CutPolicy] = {
    policy.name: policy
    for policy in (
        CutPolicy("all-offload", "every movable block on the server"),
        CutPolicy("all-local", "every movable block on the client", local=True),
        CutPolicy("mixed", "every legal cut in turn, client by client", cycle=True),
        CutPolicy("full-model", "every block on the client, no server during iterations", full_local=True),
    )
}

SCENARIO_POLICIES = tuple(name for name, policy in CUT_POLICIES.items() if not policy.full_local)
"""The policies a scenario's ``cuts.policy`` may name (full-model is fedavg-gan's layout)."""
