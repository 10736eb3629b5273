"""A small Teredo internet in network namespaces, for the demo, the system tests and the benchmarks."""
