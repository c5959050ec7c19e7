"""Input checks of the lab: bad sizes, names and networks are refused with the fix."""

import pytest

from aegis_lab.naming import (
    FleetNetwork,
    LabInputError,
    check_node_names,
    check_prefix,
    check_size,
    mac_for,
    node_addressing,
    node_names,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("size", [0, -1, 33, "three", "2.5", None, True])
def test_bad_fleet_size_is_refused_with_the_range(size):
    with pytest.raises(LabInputError, match=r"1 (to|from) .*32|whole number"):
        check_size(size)


@pytest.mark.parametrize("size", [1, "3", 32])
def test_good_fleet_sizes(size):
    assert check_size(size) == int(size)


@pytest.mark.parametrize("name", ["Node1", "node_1", "-node", "node-", "1node", "a" * 33, ""])
def test_bad_node_names_name_the_rule(name):
    with pytest.raises(LabInputError, match="lowercase letters, digits and '-'"):
        check_node_names([name])


def test_duplicate_node_names_are_refused():
    with pytest.raises(LabInputError, match="given twice"):
        check_node_names(["web", "web"])


@pytest.mark.parametrize("prefix", ["a", "Aegis", "aegis-ci", "toolongprefix", "1abc"])
def test_bad_prefix(prefix):
    with pytest.raises(LabInputError, match="15 characters"):
        check_prefix(prefix)


@pytest.mark.parametrize("cidr", ["10.0.0.0/16", "8.8.8.0/24", "10.1.2.3/24", "nonsense"])
def test_bad_fleet_network(cidr):
    with pytest.raises(LabInputError, match="/24"):
        FleetNetwork(cidr)


def test_addresses_and_macs_are_fixed_per_slot():
    net = FleetNetwork("10.213.7.0/24")
    assert net.gateway == "10.213.7.1"
    assert net.address(0) == "10.213.7.10"
    assert net.address(31) == "10.213.7.41"
    assert mac_for(net.address(2)) == "02:ae:0a:d5:07:0c"
    assert node_names(3) == ["node1", "node2", "node3"]


def test_the_lab_hands_terraform_each_nodes_address_and_mac():
    net = FleetNetwork("10.213.7.0/24")
    assert node_addressing(net, 2) == {"slot": 2, "address": "10.213.7.12",
                                       "mac": "02:ae:0a:d5:07:0c"}
    with pytest.raises(LabInputError, match="slot 32 out of range"):
        node_addressing(net, 32)
