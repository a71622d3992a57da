"""Choosing the receiver implementation from the config."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Engine

from dicom_node.config import NodeConfig
from dicom_node.net.policy import AssociationPolicy
from dicom_node.store import Store


class ReceiverLike(Protocol):
    """What the node needs of a receiver; ``policy`` is replaced on a config reload (read per association)."""

    policy: AssociationPolicy

    def start(self, *, block: bool = False, reuse_port: bool = False) -> None: ...

    @property
    def port(self) -> int: ...

    @property
    def tls_port(self) -> int | None: ...

    def stop(self) -> None: ...


def make_receiver(config: NodeConfig, engine: Engine, store: Store, index: int = 0) -> ReceiverLike:
    """The configured receiver (``native`` by default, ``pynetdicom`` as the conservative choice)."""
    if config.node.receiver == "pynetdicom":
        from dicom_node.net.scp import Receiver

        return Receiver(config, engine, store, journal_name=f"r{index}")
    from dicom_node.net.fastscp import NativeReceiver

    return NativeReceiver(config, engine, store, journal_name=f"r{index}")
