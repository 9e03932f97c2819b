"""Round-end federation strategies (one class per aggregation policy)."""

from p2pgan.protocol.federation import BlockState, ClientUpdate, FederationInput, FederationResult

from p2pgan.federation.base import FederationStrategy, create_strategy, register_strategy
from p2pgan.federation.fedavg import SizeWeightedFedAvg
from p2pgan.federation.huscf import HuSCF, HuSCFNoCluster, HuSCFNoKLD, PassThrough, correlation_feature, covariance_feature

__all__ = [
    "BlockState", "ClientUpdate", "FederationInput", "FederationResult", "FederationStrategy",
    "HuSCF", "HuSCFNoCluster", "HuSCFNoKLD", "PassThrough", "SizeWeightedFedAvg", "correlation_feature",
    "covariance_feature",
    "create_strategy", "register_strategy",
]
