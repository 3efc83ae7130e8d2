"""node.egress: what an egress sandbox may never reach, and the refusal when its tools are missing.

The sandbox itself (slirp4netns, the routes, a hostile chute) is exercised end to end in
tests/miner/test_sandbox.py."""

from __future__ import annotations

import ipaddress

import pytest

from node import egress


def test_every_host_address_and_private_range_is_prohibited(monkeypatch):
    monkeypatch.setattr(egress, "host_addresses", lambda: ["127.0.0.1/32", "10.1.2.3/32", "203.0.113.7/32"])
    networks = egress.prohibited_networks()
    assert networks[:len(egress.PROHIBITED)] == list(egress.PROHIBITED)
    assert "203.0.113.7/32" in networks, "a public address of the host is one hop away: prohibited"
    assert "10.1.2.3/32" not in networks, "already inside 10.0.0.0/8"
    blocked = [ipaddress.ip_network(n) for n in networks]
    for address in ("169.254.169.254", "192.168.1.1", "172.20.0.1", "100.64.0.1", "127.0.0.53"):
        assert any(ipaddress.ip_address(address) in net for net in blocked), address
    assert not any(ipaddress.ip_address("151.101.0.223") in net for net in blocked), "the internet stays open"


def test_the_hosts_own_addresses_are_read_from_ip():
    addresses = egress.host_addresses()
    assert "127.0.0.1/32" in addresses and all(a.endswith("/32") for a in addresses)


def test_missing_tools_are_named_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(egress, "TOOL_FOLDERS", (str(tmp_path),))
    with pytest.raises(egress.EgressUnavailable, match=r"slirp4netns is missing.*apt-get install slirp4netns"):
        egress.Egress()


def test_tools_are_found_by_absolute_path_whatever_the_path(monkeypatch, tmp_path):
    planted = tmp_path / "ip"
    planted.write_text("#!/bin/sh\necho planted\n")
    planted.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin")
    assert egress.tool("ip") != str(planted) and egress.tool("ip").startswith(("/usr/", "/sbin", "/bin"))
