"""The cohort's state as every node's :class:`~p2pgan.engine.state.NodeState`, and back.

A checkpoint holds one state per node, in the node engine's names (``blocks/...``,
``optim/<network>/<index>/...``, ``rng/node``, ``sampler/order``, ``features/<client>``). The
cohort keeps one Adam per network over the whole cohort; Adam's state is per parameter, so a
node's share is its own parameters' entries, numbered as the node's own optimizer numbers them
(the order of its parameter list). A cohort checkpoint therefore resumes a node run and the
other way round.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from p2pgan.engine.state import NodeState, copy
from p2pgan.errors import P2PGanError


def optimizer_share(network: str, optimizer: torch.optim.Optimizer | None,
                    params: Sequence[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """``params``' entries of a shared optimizer, as a node's own optimizer would name them."""
    if optimizer is None or not params:
        return {}
    index = {id(p): i for i, p in enumerate(params)}
    tensors = {}
    # The shared state's insertion order restricted to this node is the node's own order
    # (both add a parameter's entry at the first step that sees its gradient).
    for param, values in optimizer.state.items():
        i = index.get(id(param))
        if i is None:
            continue
        for key, value in values.items():
            tensors[f"optim/{network}/{i}/{key}"] = copy(torch.as_tensor(value))
    return tensors


def load_optimizer_share(state: NodeState, network: str, optimizer: torch.optim.Optimizer | None,
                         params: Sequence[torch.nn.Parameter]) -> None:
    """Put a node's saved entries back into the shared optimizer's state for its ``params``."""
    saved: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in state.under("optim").items():
        net, index, key = name.split("/", 2)
        if net == network:
            saved.setdefault(int(index), {})[key] = tensor
    if not saved:
        return
    if optimizer is None or max(saved) >= len(params):
        raise P2PGanError(f"checkpoint of node {state.node_id} does not match this run (optimizer {network}); "
                          "was the scenario changed since?")
    for index in sorted(saved):
        param = params[index]
        entry = {}
        for key, tensor in saved[index].items():
            # As torch's load_state_dict: the step stays as saved, moments follow the parameter.
            entry[key] = tensor.clone() if key == "step" else tensor.to(param.device, param.dtype).clone()
        optimizer.state[param] = entry

