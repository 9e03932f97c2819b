"""A node's state at a round end, as named tensors: what a checkpoint holds to continue a run.

Every node kind (the split client and server, MD-GAN's pair) exposes ``state_dict() -> NodeState``
and ``load_state_dict(NodeState)``, built from the helpers here. A state is a flat mapping of
names to detached copies, so it can be written as one safetensors file and compared bit for bit:

* ``blocks/<block>/<key>``: each held block's parameters and buffers (BatchNorm statistics);
* ``optim/<network>/<index>/<key>``: Adam's moments and step count per parameter of a network's
  optimizer (hyper-parameters come from the scenario, so they are not stored);
* ``rng/<name>``: a random stream's ``torch.Generator`` state;
* anything node-specific under its own prefix (``sampler/order``, ``features/<client>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from p2pgan.errors import P2PGanError


@dataclass(frozen=True)
class NodeState:
    """One node's tensors at the end of a round (copies: the node trains on meanwhile)."""

    node_id: str
    tensors: dict[str, torch.Tensor]

    def under(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors named ``<prefix>/<rest>``, keyed by ``<rest>``."""
        head = prefix + "/"
        return {name[len(head):]: t for name, t in self.tensors.items() if name.startswith(head)}


def copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous host copy (what safetensors writes; the node's own may be on a GPU)."""
    return tensor.detach().to("cpu", copy=True).contiguous()


def blocks_state(blocks: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"blocks/{block}/{key}": copy(t) for block, module in blocks.items()
            for key, t in module.state_dict().items()}


def optimizers_state(optimizers: Mapping[str, torch.optim.Optimizer | None]) -> dict[str, torch.Tensor]:
    tensors = {}
    for network, optimizer in optimizers.items():
        if optimizer is None:
            continue
        for index, values in optimizer.state_dict()["state"].items():
            for key, value in values.items():
                tensors[f"optim/{network}/{index}/{key}"] = copy(torch.as_tensor(value))
    return tensors


def allocate_adam_state(optimizer: torch.optim.Optimizer | None) -> None:
    """Adam's per-parameter state (step 0, zero moments) made now, as its first step would make it.

    The numbers are the same; where they live is not. Made lazily, the moments are allocated in
    the middle of the first iteration, wherever the heap has room between that iteration's
    activations, and stay there for the run: every later iteration packs its activations around
    them, and the heap grows by what no longer fits. Made before any activation, they sit with
    the parameters.
    """
    if not isinstance(optimizer, torch.optim.Adam):
        return
    for group in optimizer.param_groups:
        if group["fused"] or group["capturable"]:
            return  # those keep ``step`` on the device; let Adam make its own
        for param in group["params"]:
            if optimizer.state.get(param):
                continue
            step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state = {"step": torch.tensor(0.0, dtype=step_dtype),
                     "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                     "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            optimizer.state[param] = state


def generator_state(name: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"rng/{name}": generator.get_state()}


def load_blocks(state: NodeState, blocks: Mapping[str, torch.nn.Module]) -> None:
    saved = state.under("blocks")
    for block, module in blocks.items():
        own = {key[len(block) + 1:]: t for key, t in saved.items() if key.startswith(block + "/")}
        expected = module.state_dict()
        if set(own) != set(expected):
            raise _mismatch(state, f"block {block}")
        with torch.no_grad():
            for key, target in expected.items():
                if own[key].shape != target.shape:
                    raise _mismatch(state, f"block {block} {key} shape {tuple(own[key].shape)}")
                target.copy_(own[key])
    unknown = {key.split("/", 1)[0] for key in saved} - set(blocks)
    if unknown:
        raise _mismatch(state, f"block(s) {', '.join(sorted(unknown))} this node does not hold")


def load_optimizers(state: NodeState, optimizers: Mapping[str, torch.optim.Optimizer | None]) -> None:
    saved = state.under("optim")
    for network, optimizer in optimizers.items():
        if optimizer is None:
            continue
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for name, t in saved.items():
            net, index, key = name.split("/", 2)
            if net == network:
                per_param.setdefault(int(index), {})[key] = t.clone()
        current = optimizer.state_dict()
        if not set(per_param) <= set(current["param_groups"][0]["params"]):
            raise _mismatch(state, f"optimizer {network}")
        optimizer.load_state_dict({"state": per_param, "param_groups": current["param_groups"]})


def load_generator(state: NodeState, name: str, generator: torch.Generator) -> None:
    saved = state.tensors.get(f"rng/{name}")
    if saved is None:
        raise _mismatch(state, f"random stream {name}")
    generator.set_state(saved.clone())


def _mismatch(state: NodeState, what: str) -> P2PGanError:
    return P2PGanError(f"checkpoint of node {state.node_id} does not match this run ({what}); "
                       "was the scenario changed since?")
