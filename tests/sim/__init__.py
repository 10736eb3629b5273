"""A simulated network for the client machine (see network.py)."""
