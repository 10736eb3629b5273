"""Teredo (RFC 4380, RFC 5991, RFC 6081): IPv6 over UDP/IPv4 through NATs."""

__version__ = "0.1.0"
