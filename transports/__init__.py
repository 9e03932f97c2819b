"""Pluggable transports. Each registers itself by name; ``create_transport`` builds one."""

from transports.base import Endpoint, Mailbox, Transport, TransportTap, create_transport, register_transport

__all__ = ["Endpoint", "Mailbox", "Transport", "TransportTap", "create_transport", "register_transport"]
