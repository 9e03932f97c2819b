"""Scenario files: parsed and validated once, at the edge, into typed objects."""

from p2pgan.config.loader import apply_overrides, load_scenario, parse_scenario
from p2pgan.config.schema import (
    CutsSpec,
    DataSpec,
    MetricsSpec,
    ModelSection,
    OutputSpec,
    PartitionSpec,
    Scenario,
    StrategySpec,
    TrainingSpec,
    TransportSpec,
)

__all__ = [
    "CutsSpec", "DataSpec", "MetricsSpec", "ModelSection", "OutputSpec", "PartitionSpec", "Scenario",
    "StrategySpec", "TrainingSpec", "TransportSpec", "apply_overrides", "load_scenario", "parse_scenario",
]
