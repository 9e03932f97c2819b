"""FedProx: the strategy added in two files (strategies/fedprox.py + one catalogue line)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from p2pgan.config import load_scenario
from p2pgan.model.blocks import build_initial_blocks
from p2pgan.run.session import run_scenario


def run(repo_root, tmp_path, name: str, strategy: str):
    scenario = load_scenario(repo_root / "scenarios" / "quick.yaml", [
        f"strategy={strategy}", "training.rounds=1", "training.max_batches_per_epoch=3", "cuts.policy=all-local",
        f"output.dir={tmp_path / name}"])
    outcome = run_scenario(scenario)
    assert outcome.status == "completed", outcome.summary
    return scenario, load_file(str(tmp_path / name / "weights" / "cluster-0.safetensors"))


def test_mu_zero_is_split_fedavg_bit_for_bit(repo_root, tmp_path):
    _, fedavg = run(repo_root, tmp_path, "fedavg", "{name: split-fedavg}")
    _, prox0 = run(repo_root, tmp_path, "prox0", "{name: fedprox, mu: 0.0}")
    assert fedavg.keys() == prox0.keys()
    assert all(torch.equal(fedavg[k], prox0[k]) for k in fedavg)


def test_the_proximal_term_keeps_client_blocks_near_the_round_start(repo_root, tmp_path):
    scenario, free = run(repo_root, tmp_path, "free", "{name: fedprox, mu: 0.0}")
    _, held = run(repo_root, tmp_path, "held", "{name: fedprox, mu: 50.0}")
    start = build_initial_blocks(scenario.model.to_spec(), scenario.seed)

    def drift(weights: dict[str, torch.Tensor], block: str) -> float:
        params = dict(start[block].named_parameters())
        return sum(float((weights[f"{block}.{n}"] - p.detach()).norm()) for n, p in params.items())

    # g1 and d1 are client-held under all-local cuts; the server's blocks get no proximal term
    for block in ("g0", "g1", "d1"):
        assert drift(held, block) < 0.8 * drift(free, block), block


def test_fedprox_options_are_its_own(repo_root, tmp_path):
    from p2pgan.errors import ConfigError
    from p2pgan.strategies.catalogue import strategy_for

    with pytest.raises(ConfigError, match=r"strategy\.warmup_rounds: not an option of strategy fedprox"):
        strategy_for(load_scenario(repo_root / "scenarios" / "quick.yaml",
                                   ["strategy={name: fedprox, warmup_rounds: 2}", f"output.dir={tmp_path}"]))
