"""The sans-I/O core: codecs, state machines, peer tables, configuration.

Nothing in this package opens a socket or a file descriptor, reads a clock, logs through a
handler or keeps global state. Time, randomness and received bytes come in as arguments;
datagrams, timers and events go out as results.
"""
