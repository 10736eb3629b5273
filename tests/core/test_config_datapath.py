"""The Datapath directive and --datapath (issue 8, docs/kernel.md): auto, kernel or user, for
every role; anything else is one error naming file, line and directive."""

from __future__ import annotations

import pytest

from teredo.core.config import ConfigError, DatapathMode, Directive, Role, parse_config

_HEAD = {
    Role.CLIENT: "ServerAddress 198.51.100.1\n",
    Role.RELAY: "RelayType cone\n",
    Role.SERVER: "ServerBindAddress 198.51.100.1\n",
}


@pytest.mark.parametrize("role", list(Role))
def test_default_is_auto(role: Role) -> None:
    assert parse_config(_HEAD[role], "t.conf", role).datapath is DatapathMode.AUTO


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("value", ["auto", "kernel", "user", "KERNEL"])
def test_each_value_for_each_role(role: Role, value: str) -> None:
    settings = parse_config(_HEAD[role] + f"Datapath {value}\n", "t.conf", role)
    assert settings.datapath is DatapathMode(value.lower())


def test_unknown_value_names_file_line_and_directive() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("RelayType cone\n\ndatapath xdp\n", "r.conf", Role.RELAY)
    assert str(info.value) == (
        'r.conf:3: Datapath: unknown data path "xdp" (expected auto, kernel, user)'
    )


def test_flag_overrides_the_file_and_is_named_in_errors() -> None:
    flag = Directive.flag("Datapath", "user", "--datapath")
    settings = parse_config("RelayType cone\nDatapath kernel\n", "r.conf", Role.RELAY, [flag])
    assert settings.datapath is DatapathMode.USER
    with pytest.raises(ConfigError) as info:
        parse_config(
            "", "command line", Role.SERVER, [Directive.flag("Datapath", "", "--datapath")]
        )
    assert str(info.value).startswith('command line: --datapath: unknown data path ""')
