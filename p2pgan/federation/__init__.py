"""Round-end federation strategies (one class per aggregation policy)."""

from p2pgan.federation.base import (
    BlockState,
    ClientUpdate,
    FederationInput,
    FederationResult,
    FederationStrategy,
    create_strategy,
    register_strategy,
)

__all__ = [
    "BlockState", "ClientUpdate", "FederationInput", "FederationResult", "FederationStrategy",
    "create_strategy", "register_strategy",
]
