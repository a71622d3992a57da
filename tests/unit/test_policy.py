"""Association policy decisions and their A-ASSOCIATE-RJ reasons."""

from __future__ import annotations

import pytest

from dicom_node.config import ConfigError, Peer, parse_config
from dicom_node.net.policy import REJECT_BUSY, REJECT_CALLED_AE, REJECT_CALLING_AE, AssociationPolicy

CONFIG = parse_config(
    "[node]\nae_title = 'NODE'\nmax_associations = 2\n"
    "[[peers]]\nae_title = 'PACS'\nhost = '127.0.0.1'\n"
    "[[peers]]\nae_title = 'CT1'\n"
)


def test_known_peer_from_its_host_is_accepted() -> None:
    policy = AssociationPolicy(CONFIG)
    assert policy.decide("NODE", "PACS", "127.0.0.1", 0).accept
    assert policy.decide("NODE  ", "CT1 ", "10.1.2.3", 1).accept


def test_rejections_carry_the_right_reason() -> None:
    policy = AssociationPolicy(CONFIG)
    assert policy.decide("OTHER", "PACS", "127.0.0.1", 0).reject == REJECT_CALLED_AE
    assert policy.decide("NODE", "INTRUDER", "127.0.0.1", 0).reject == REJECT_CALLING_AE
    wrong_host = policy.decide("NODE", "PACS", "10.9.9.9", 0)
    assert wrong_host.reject == REJECT_CALLING_AE and "10.9.9.9" in wrong_host.reason
    assert policy.decide("NODE", "CT1", "10.1.2.3", 2).reject == REJECT_BUSY


def test_open_door_accepts_unknown_callers() -> None:
    config = parse_config("[node]\nae_title = 'NODE'\naccept_unknown_callers = true\n")
    assert AssociationPolicy(config).decide("NODE", "ANYONE", "10.0.0.1", 0).accept


def test_an_ae_title_bound_to_a_certificate_needs_that_certificate_over_tls() -> None:
    policy = AssociationPolicy(CONFIG)
    policy.peers["CT2"] = [Peer(ae_title="CT2", certificate_name="ct2.example.org")]
    assert policy.decide("NODE", "CT2", "10.0.0.1", 0, frozenset({"ct2.example.org", "CT 2"})).accept
    other = policy.decide("NODE", "CT2", "10.0.0.1", 0, frozenset({"ct3.example.org"}))
    assert other.reject == REJECT_CALLING_AE
    assert other.reason.endswith(
        "needs the certificate 'ct2.example.org'; the caller's certificate names 'ct3.example.org'"
    )
    anonymous = policy.decide("NODE", "CT2", "10.0.0.1", 0, frozenset())
    assert anonymous.reject == REJECT_CALLING_AE and anonymous.reason.endswith("names none")
    plain = policy.decide("NODE", "CT2", "10.0.0.1", 0, None)
    assert plain.reject == REJECT_CALLING_AE and "must call over DICOM TLS" in plain.reason
    # Unbound peers do not care how they call.
    assert policy.decide("NODE", "CT1", "10.0.0.1", 0, None).accept
    assert policy.decide("NODE", "CT1", "10.0.0.1", 0, frozenset({"ct3.example.org"})).accept


def test_entries_of_one_ae_title_are_alternatives() -> None:
    policy = AssociationPolicy(CONFIG)
    policy.peers["CT2"] = [
        Peer(ae_title="CT2", host="127.0.0.1"),  # plain from the console next to the node
        Peer(ae_title="CT2", certificate_name="ct2.example.org"),  # from anywhere with its certificate
    ]
    assert policy.decide("NODE", "CT2", "127.0.0.1", 0, None).accept
    assert policy.decide("NODE", "CT2", "10.0.0.1", 0, frozenset({"ct2.example.org"})).accept
    assert not policy.decide("NODE", "CT2", "10.0.0.1", 0, None).accept


def test_a_bound_peer_without_a_tls_listener_is_a_config_error_naming_the_line() -> None:
    text = "[node]\nae_title = 'NODE'\n[[peers]]\nae_title = 'CT2'\ncertificate_name = 'ct2.example.org'\n"
    with pytest.raises(
        ConfigError, match=r"<config>:5: peers\.0\.certificate_name: 'CT2' may only call over DICOM TLS"
    ):
        parse_config(text)
