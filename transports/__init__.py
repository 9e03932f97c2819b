"""Pluggable transports behind one interface (:mod:`p2pgan.protocol.endpoint`); the catalogue
(:mod:`transports.catalogue`) names them. Importing this package imports no transport."""
