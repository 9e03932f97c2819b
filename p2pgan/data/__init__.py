"""Datasets (the MNIST-family domains and datasets of the user's own images) and client partitions."""

from p2pgan.data.idx import read_idx, read_idx_images, read_idx_labels, read_mnist_csv, write_idx
from p2pgan.data.partition import (
    EXCLUSION_TABLE,
    PARTITION_KINDS,
    SIZE_RATIO_TABLE,
    ClientPartition,
    partition_clients,
)
from p2pgan.data.registry import (
    DOMAINS,
    NUM_CLASSES,
    DomainData,
    DomainInfo,
    DomainSpec,
    canonical_domain,
    clear_cache,
    describe_domains,
    domain_names,
    domain_spec,
    load_domain,
    to_model_input,
)

__all__ = [
    "DOMAINS",
    "NUM_CLASSES",
    "DomainData",
    "DomainInfo",
    "DomainSpec",
    "canonical_domain",
    "clear_cache",
    "describe_domains",
    "domain_names",
    "domain_spec",
    "load_domain",
    "to_model_input",
    "ClientPartition",
    "PARTITION_KINDS",
    "EXCLUSION_TABLE",
    "SIZE_RATIO_TABLE",
    "partition_clients",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_mnist_csv",
    "write_idx",
]
