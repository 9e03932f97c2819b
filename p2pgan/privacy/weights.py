"""Trained weights from a finished run's results folder, per domain.

A run writes ``weights/cluster-K.safetensors`` (every block of G and D after the last round's
cluster averaging, keyed ``block.parameter``) and, in the last line of ``rounds.jsonl``, which
cluster each domain's clients mostly belong to (``domain_clusters``). A domain's weights are its
cluster's model: what its clients hold after aggregation (the server's shared blocks included).
Files are read with safetensors (never pickle).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from p2pgan.errors import P2PGanError

StateDicts = dict[str, dict[str, torch.Tensor]]


def split_flat(flat: dict[str, torch.Tensor]) -> StateDicts:
    """``{"g0.linear.weight": t}`` -> ``{"g0": {"linear.weight": t}}``."""
    blocks: StateDicts = {}
    for key, tensor in flat.items():
        block, _, name = key.partition(".")
        blocks.setdefault(block, {})[name] = tensor
    return blocks


def _last_round(run_dir: Path) -> dict:
    rounds = run_dir / "rounds.jsonl"
    try:
        lines = [line for line in rounds.read_text(encoding="utf-8").splitlines() if line.strip()]
        return json.loads(lines[-1])
    except (OSError, IndexError, json.JSONDecodeError) as exc:
        raise P2PGanError(f"{rounds}: cannot read the last round ({type(exc).__name__}); is {run_dir} a "
                          "finished run's results folder?") from None


def load_run_weights(run_dir: Path, domains: list[str]) -> dict[str, StateDicts]:
    """Domain -> block -> state_dict, from the cluster each domain's clients speak for."""
    run_dir = Path(run_dir)
    clusters = _last_round(run_dir).get("domain_clusters") or {}
    out = {}
    for domain in domains:
        if domain not in clusters:
            raise P2PGanError(f"{run_dir}: the run has no weights for domain {domain} "
                              f"(it trained {', '.join(clusters) or 'none'})")
        path = run_dir / "weights" / f"cluster-{clusters[domain]}.safetensors"
        try:
            out[domain] = split_flat(load_file(str(path)))
        except (OSError, SafetensorError) as exc:
            raise P2PGanError(f"{path}: cannot read weights ({exc})") from None
    return out
