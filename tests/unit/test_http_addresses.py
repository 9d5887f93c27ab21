"""Which hosts an HTTP input may be fetched from: every spelling of a local address is refused."""

from __future__ import annotations

import ipaddress

import pytest

from storage import HttpInput, InvalidSource
from storage.http import is_public, literal_address


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),  # one decimal number
    ("0177.0.0.1", "127.0.0.1"),  # octal
    ("0x7f.1", "127.0.0.1"),  # hex, two parts
    ("0x7F000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("10.0.258", "10.0.1.2"),  # the last part fills the remaining bytes
    ("127.0.0.1.", "127.0.0.1"),  # a trailing dot
    ("0", "0.0.0.0"),
    ("[::1]", "::1"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ("fe80::1%25eth0", "fe80::1%eth0"),
])
def test_numeric_hosts_are_read_as_the_c_resolver_reads_them(host: str, address: str) -> None:
    assert literal_address(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "localhost", "1.example", "0x7f.example", "example.com.", "1.2.0x1g"])
def test_names_are_names(host: str) -> None:
    assert literal_address(host) is None


@pytest.mark.parametrize("host", ["256.0.0.1", "1.2.3.4.5", "08.0.0.1", "1.2.3.4294967296", "example.08"])
def test_a_host_ending_in_a_number_must_be_an_address(host: str) -> None:
    with pytest.raises(ValueError):
        literal_address(host)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "0.0.0.0", "0.1.2.3",  # loopback, 0.0.0.0/8
    "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",  # private, shared (CGNAT)
    "169.254.169.254",  # link-local: the cloud metadata service
    "224.0.0.1", "239.1.2.3",  # multicast
    "240.0.0.1", "255.255.255.255",  # reserved, broadcast
    "192.0.2.1", "198.18.0.1",  # documentation, benchmarking
    "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1",  # unspecified, loopback, link-local, ULA
    "ff02::1", "ff0e::1",  # multicast
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:8.8.8.8",  # IPv4-mapped: never dialled as such
    "::127.0.0.1", "64:ff9b::7f00:1",  # IPv4-compatible (deprecated), NAT64
    "2002:7f00:1::1", "2002:a00:1::1",  # 6to4 around loopback and a private address
    "2001:db8::1",  # documentation
    "192.0.0.8", "192.0.0.9", "192.88.99.1", "fec0::1",  # special-purpose, 6to4 relay, site-local (deprecated)
])
def test_non_global_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2002:808:808::1"])
def test_global_unicast_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", [
    "http://2130706433:1/x", "http://0x7f.1:1/x", "http://127.1:1/x", "http://0x7F000001:1/x",
    "http://[::ffff:127.0.0.1]:1/x", "http://[::1]:1/x", "http://0.0.0.0:1/x", "http://0:1/x",
    "http://[fe80::1%25lo]:1/x", "http://169.254.169.254/latest/meta-data/", "http://[fd00::1]:1/x",
    "http://224.0.0.1:1/x", "https://localhost:1/x", "http://127.0.0.1.:1/x",
])
async def test_every_spelling_of_a_local_address_is_refused_before_connecting(url: str, tmp_path) -> None:
    with pytest.raises(InvalidSource, match="local or private"):
        await HttpInput(connect_timeout=0.5).fetch(url, tmp_path / "x", max_bytes=100)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("url", ["http://0177.0.0.1:1/x", "http://1.2.3.4.5/x", "ftp://example.com/x"])
async def test_malformed_hosts_are_refused(url: str, tmp_path) -> None:
    with pytest.raises(InvalidSource):
        await HttpInput(connect_timeout=0.5).fetch(url, tmp_path / "x", max_bytes=100)
