"""The averaging helpers every strategy's aggregation shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import torch

from p2pgan.protocol.federation import BlockState, FederationInput, FederationResult


def weighted_average(states: Sequence[BlockState], weights: Sequence[float]) -> BlockState:
    """Σ w_i·θ_i per tensor. Float tensors only; integer buffers keep the first state's value."""
    out: BlockState = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, w in zip(states, weights):
            acc += float(w) * state[name].to(torch.float64)
        out[name] = acc.to(first.dtype)
    return out


def average_cluster(inputs: FederationInput, members: Sequence[str], weights: Mapping[str, float]) -> dict[str, BlockState]:
    """Per block of the whole model, Σ w_i·θ_i over ``members`` (own or server copy per docs/design.md §1.3)."""
    return {
        block: weighted_average([inputs.layer_copy(c, block) for c in members], [weights[c] for c in members])
        for block in inputs.all_blocks
    }


def size_weights(inputs: FederationInput, members: Sequence[str]) -> dict[str, float]:
    total = sum(inputs.updates[c].num_examples for c in members)
    return {c: inputs.updates[c].num_examples / total for c in members}


def distribute(inputs: FederationInput, clusters: Mapping[str, int],
               cluster_models: Mapping[int, dict[str, BlockState]],
               server_model: Mapping[str, BlockState]) -> FederationResult:
    """Send each client its cluster's blocks; the server keeps ``server_model`` for its blocks."""
    client_blocks = {
        cid: {block: cluster_models[clusters[cid]][block] for block in update.blocks}
        for cid, update in inputs.updates.items()
    }
    server_blocks = {block: server_model[block] for block in inputs.server_blocks}
    return FederationResult(client_blocks, server_blocks, dict(clusters), dict(cluster_models))


def keep_own(inputs: FederationInput) -> FederationResult:
    """No averaging: every client keeps exactly what it sent (each its own cluster)."""
    ids = list(inputs.updates)
    models = {i: {b: dict(inputs.layer_copy(c, b)) for b in inputs.all_blocks} for i, c in enumerate(ids)}
    result = distribute(inputs, {c: i for i, c in enumerate(ids)}, models, models[0])
    result.details["note"] = "no averaging"
    return result


def size_weighted_fedavg(inputs: FederationInput) -> FederationResult:
    """Every client in one cluster; every layer averaged with weights n_i / Σ n."""
    members = list(inputs.updates)
    weights = size_weights(inputs, members)
    model = average_cluster(inputs, members, weights)
    result = distribute(inputs, {c: 0 for c in members}, {0: model}, model)
    result.details["weights"] = weights
    return result
