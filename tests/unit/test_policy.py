"""Association policy decisions and their A-ASSOCIATE-RJ reasons."""

from __future__ import annotations

from dicom_node.config import parse_config
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
