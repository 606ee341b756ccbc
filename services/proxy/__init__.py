"""Proxy data plane: forwarding, streaming, token accounting, metrics."""
