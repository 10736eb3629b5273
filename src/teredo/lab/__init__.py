"""A small Teredo internet in network namespaces, for the demo, the system tests and benchmarks.

`Lab` (teredo.lab.topology) builds it; `NatKind` (teredo.lab.nat) names the NAT kinds; `Role` and
`Impl` (teredo.lab.roles) select who runs each Teredo role. See docs/lab.md.
"""
