"""The relay driver's fault bookkeeping: a data-path fault is told apart by where it was raised,
so each kind is logged once and later ones are only counted."""

from __future__ import annotations

from teredo.io.relay_driver import _fault_site


def _raise_here() -> None:
    raise ValueError("boom")


def test_fault_site_names_the_raising_line() -> None:
    sites = set()
    for _ in range(3):
        try:
            _raise_here()
        except ValueError as exc:
            sites.add(_fault_site(exc))
    assert len(sites) == 1
    site = sites.pop()
    assert site.startswith(__file__ + ":")
    assert int(site.rsplit(":", 1)[1]) == _raise_here.__code__.co_firstlineno + 1


def test_fault_site_of_an_exception_never_raised() -> None:
    assert _fault_site(ValueError("never raised")) == "?"
