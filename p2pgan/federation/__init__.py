"""Federated averaging math: weighted averages, clustering, KLD weights, HuSCF's aggregation.

Strategies (:mod:`p2pgan.strategies`) compose these; nothing here knows a strategy's name.
"""
