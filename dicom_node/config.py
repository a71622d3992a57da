"""The node's configuration file (TOML): pydantic models, loading, and errors that name the line.

Every default lives here and nowhere else. ``load_config(path)`` returns a validated :class:`NodeConfig`;
any problem raises :class:`ConfigError` whose message starts with ``file:line:``.

This module imports nothing else of the package: what needs the router's grammar or the pipeline
registry (route ``match`` keys, pipeline names and options) is checked by
:mod:`dicom_node.intake.routing_check`, whose ``load_checked_config`` is what the node's commands use.
"""

from __future__ import annotations

import re
import ssl
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire, no backslash
DICOM_TLS_PORT = 2762  # IANA "dicom-tls"
# BCP 195 (RFC 9325 section 4.2) TLS 1.2 cipher suites, as an OpenSSL list: ECDHE key exchange, AES-GCM only.
# TLS 1.3 suites (all AEAD) are not set by this list.
BCP195_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
)


class ConfigError(ValueError):
    """A configuration problem, with the file and line it comes from when known."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae(value: str) -> str:
    stripped = value.strip()
    if not AE_TITLE.match(stripped):
        raise ValueError(f"not a valid AE title (1-16 printable characters, no backslash): {value!r}")
    return stripped


class DuplicatePolicy(StrEnum):
    """What the receiver does with a SOP Instance UID it already holds."""

    KEEP_FIRST = "keep-first"  # answer Success, keep the stored file, count it
    OVERWRITE = "overwrite"  # replace the stored file (a corrected resend)
    REJECT = "reject"  # answer a failure status


class NodeSection(_Model):
    """The node's own identity, its listening port and its storage."""

    ae_title: str = "DICOM_NODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)  # 0: any free port (tests)
    storage: Path = Path("storage")
    models: Path | None = None  # a site's own bundles, <models>/<pipeline name>, used before the shipped ones
    database: str = ""  # empty: SQLite file in storage/
    max_associations: int = Field(16, ge=1, le=1000)  # counted from a completed negotiation
    # ARTIM (PS3.8 9.1.5): a connection must deliver its whole A-ASSOCIATE-RQ this soon after it opens.
    association_request_timeout_s: float = Field(20.0, gt=0, le=600)
    # Silence allowed between PDUs; a PDU once begun must be complete within it plus 1 s per MiB.
    network_timeout_s: float = Field(120.0, gt=0, le=3600)
    # Connections from one address still negotiating; a newer one closes the oldest (a flood recycles
    # its own connections and never keeps another host, or a later sender from that host, out).
    max_pending_per_address: int = Field(4, ge=1, le=1000)
    max_pdu: int = Field(0, ge=0)  # 0 = unlimited
    min_free_disk_mb: int = Field(500, ge=0)
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    durability: Literal["journal", "file"] = "journal"
    receiver: Literal["native", "pynetdicom"] = "native"
    receiver_processes: int = Field(1, ge=1, le=64)
    workers: int = Field(1, ge=0, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    accept_unknown_callers: bool = False

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))

    def database_url(self) -> str:
        """The SQLAlchemy URL, defaulting to a SQLite file under the storage folder."""
        if self.database:
            return self.database
        return f"sqlite:///{(self.storage / 'node.db').resolve()}"


class Peer(_Model):
    """A calling AE allowed to send to the node, optionally pinned to a host or IP and to a TLS certificate.

    With ``certificate_name`` the AE title is accepted only over DICOM TLS from a caller whose verified
    client certificate names it (subject common name or a DNS subject alternative name): another trusted
    certificate cannot use this AE title, and neither can a plain association.
    """

    ae_title: str
    host: str | None = None
    certificate_name: str | None = Field(None, min_length=1)

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))


OutputKind = Literal["seg", "sr", "gsps", "overlay"]


class Destination(_Model):
    """A DICOM SCP that receives results."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    outputs: list[OutputKind] = ["seg", "sr"]
    retry_for_hours: float = Field(24.0, gt=0)
    retry_backoff_s: float = Field(10.0, gt=0)
    retry_backoff_max_s: float = Field(600.0, gt=0)
    tls: bool = False  # DICOM TLS (BCP 195, TLS 1.2+) to this destination
    ca_certificates: Path | None = None  # the CAs that may sign its certificate (PEM); none: the system's CAs
    certificate: Path | None = None  # our client certificate (PEM), for a destination that wants mutual TLS
    private_key: Path | None = None  # its key (PEM, not encrypted)
    verify_hostname: bool = True  # its certificate must name ``host`` (subjectAltName)

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))
    _files = field_validator("ca_certificates", "certificate", "private_key")(
        classmethod(lambda cls, v, info: _check_tls_file(v, info))
    )

    @model_validator(mode="after")
    def _tls_options(self) -> Destination:
        if not self.tls and (self.ca_certificates or self.certificate or self.private_key):
            raise ValueError("ca_certificates / certificate / private_key are TLS options: set tls = true")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class Range(_Model):
    """A numeric range; either end may be left open."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min} is above max {self.max}")
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        return self


MatchValue = str | float | int | bool | Range | list[str | float | int]


def _match_value(key: str, value: Any) -> MatchValue:
    """Coerce one ``match`` entry: tables become :class:`Range`, everything else must be a plain value."""
    if isinstance(value, dict):
        try:
            return Range(**value)
        except ValidationError as exc:
            raise ValueError(f"match key '{key}': {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    if isinstance(value, (str, int, float, bool, Range)):
        return value
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return value
    raise ValueError(f"match key '{key}': expected a string, number, true/false, {{min, max}} or a list, got {value!r}")


class Route(_Model):
    """A routing rule: which series go to which pipelines, outputs and destinations."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    match: dict[str, Any] = {}
    pipelines: list[str] = Field(min_length=1)
    destinations: list[str] = []
    outputs: list[OutputKind] | None = None  # None: each destination's own list
    wait_for: Literal["series", "study"] = "series"
    priority: int = 0
    options: dict[str, Any] = {}

    @field_validator("match")
    @classmethod
    def _coerce_match(cls, value: dict[str, Any]) -> dict[str, MatchValue]:
        # The keys and patterns are checked against the router's grammar by
        # dicom_node.intake.routing_check, which loads configs for use.
        return {key: _match_value(key, spec) for key, spec in value.items()}


class RetentionSection(_Model):
    """What the node deletes, and when (see :mod:`dicom_node.retention`): off unless configured."""

    enabled: bool = False
    keep_days: float = Field(30.0, gt=0)  # a settled study (results delivered) is deleted this long after
    purge_below_free_mb: int = Field(0, ge=0)  # below this, settled studies go oldest first (0: off)
    interval_s: float = Field(600.0, gt=0)


class TlsSection(_Model):
    """DICOM TLS (PS3.15 Annex B, BCP 195 profile): a second listener on ``port``; present means on.

    The plain listener on ``node.port`` stays unless that is 0. Every file is checked when the config loads.
    """

    port: int = Field(DICOM_TLS_PORT, ge=0, le=65535)  # 0: any free port (tests)
    certificate: Path  # the node's certificate (PEM; may carry the chain after it)
    private_key: Path  # its key (PEM, not encrypted: the node starts unattended)
    ca_certificates: Path | None = None  # the CAs whose client certificates are trusted (PEM bundle)
    require_client_certificate: bool = True  # mutual TLS: a caller without a trusted certificate is refused
    minimum_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: str = BCP195_CIPHERS  # TLS 1.2 suites (OpenSSL syntax)

    _files = field_validator("ca_certificates", "certificate", "private_key")(
        classmethod(lambda cls, v, info: _check_tls_file(v, info))
    )

    @field_validator("ciphers")
    @classmethod
    def _known_ciphers(cls, value: str) -> str:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(value)
        except ssl.SSLError:
            raise ValueError(f"no cipher suite matches {value!r}") from None
        return value

    @model_validator(mode="after")
    def _trust(self) -> TlsSection:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates (the CAs of the callers' certificates)")
        return self


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    """Password callback for keys: an encrypted key is an error, never a prompt on the terminal."""
    raise _EncryptedKey


def _check_tls_file(value: Path | None, info: Any) -> Path | None:
    """A TLS file must be readable PEM of the right kind; a private key must match the certificate."""
    if value is None:
        return None
    try:
        value.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {value}: {exc.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if info.field_name == "ca_certificates":
            context.load_verify_locations(cafile=value)
        elif info.field_name == "private_key" and info.data.get("certificate") is not None:
            context.load_cert_chain(info.data["certificate"], value, password=_no_password)
        elif info.field_name == "certificate":
            context.load_verify_locations(cafile=value)  # parses as a certificate
    except _EncryptedKey:
        raise ValueError(f"{value} is an encrypted key: the node needs it unencrypted (file mode 0600)") from None
    except ssl.SSLError as exc:
        what = {"private_key": "a PEM key matching the certificate", "certificate": "a PEM certificate"}
        raise ValueError(f"{value} is not {what.get(str(info.field_name), 'PEM certificates')}: {exc.reason}") from None
    return value


class WebUser(_Model):
    """A dashboard / API account: its name and a password hash from ``dicom-node hash-password``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    password_hash: str = Field(pattern=r"^(scrypt|pbkdf2_sha256)\$")


class WebSection(_Model):
    """The HTTP service: probes and monitoring (``/healthz``, ``/readyz``, ``/metrics``, no login) and, for
    the ``users`` listed, the dashboard and the REST API under ``/api/``. Off unless a ``[web]`` section turns
    it on (the example config does), so nodes made from a bare config bind no port."""

    enabled: bool = False
    host: str = "127.0.0.1"  # local only by default; a monitoring host elsewhere needs "0.0.0.0" and a firewall rule
    port: int = Field(8088, ge=0, le=65535)  # 0: any free port (tests)
    users: list[WebUser] = []  # no users: the dashboard and /api/ refuse every login
    session_hours: float = Field(12.0, gt=0, le=24 * 30)  # a login lasts this long (sessions end with the process)
    max_failed_logins: int = Field(5, ge=1)  # per client address per 15 minutes, then 429 until the window ends


class IntakeSection(_Model):
    """When a series counts as complete."""

    quiet_period_s: float = Field(5.0, ge=0)
    sweep_interval_s: float = Field(1.0, gt=0)


class QueueSection(_Model):
    """Job retries and leases."""

    max_attempts: int = Field(3, ge=1)
    lease_s: float = Field(120.0, gt=0)
    heartbeat_s: float = Field(10.0, gt=0)
    backoff_base_s: float = Field(10.0, gt=0)
    backoff_max_s: float = Field(3600.0, gt=0)
    poll_s: float = Field(0.5, gt=0)


class NodeConfig(_Model):
    """The whole configuration file."""

    node: NodeSection = NodeSection()
    intake: IntakeSection = IntakeSection()
    queue: QueueSection = QueueSection()
    web: WebSection = WebSection()
    retention: RetentionSection = RetentionSection()
    tls: TlsSection | None = None  # no [tls] section: no TLS listener
    peers: list[Peer] = []
    destinations: list[Destination] = []
    routes: list[Route] = []

    @model_validator(mode="after")
    def _ports(self) -> NodeConfig:
        # Two listeners on one port: the second bind would fail at start with "address in use".
        taken = {"node.port": self.node.port}
        if self.tls is not None:
            taken["tls.port"] = self.tls.port
        if self.web.enabled:
            taken["web.port"] = self.web.port
        seen: dict[int, str] = {}
        for key, port in taken.items():
            if port and port in seen:
                raise ValueError(f"{key}: port {port} is {seen[port]} too; each listener needs a port of its own")
            seen.setdefault(port, key)
        return self

    @model_validator(mode="after")
    def _certificates(self) -> NodeConfig:
        # A peer bound to a certificate can only call over TLS: without a listener it could never send.
        for i, peer in enumerate(self.peers):
            if peer.certificate_name is not None and self.tls is None:
                raise ValueError(
                    f"peers[{i}]: certificate_name: {peer.ae_title!r} may only call over DICOM TLS, "
                    "and there is no [tls] section"
                )
        return self

    @model_validator(mode="after")
    def _references(self) -> NodeConfig:
        # Pipeline names and options are checked against the registry by dicom_node.intake.routing_check.
        names = [d.name for d in self.destinations]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"destinations[{i}]: duplicate destination name {name!r}")
        for i, route in enumerate(self.routes):
            for dest in route.destinations:
                if dest not in names:
                    raise ValueError(f"routes[{i}]: unknown destination {dest!r} (known: {', '.join(names)})")
            for pipeline, options in route.options.items():
                if pipeline not in route.pipelines or not isinstance(options, dict):
                    raise ValueError(
                        f"routes[{i}]: options must be a table per pipeline of the route, got {pipeline!r}"
                    )
        return self

    def destination(self, name: str) -> Destination:
        for d in self.destinations:
            if d.name == name:
                return d
        raise KeyError(name)

    def route(self, name: str) -> Route:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a config file; storage paths are resolved relative to the file."""
    path = Path(path)
    return parse_config(read_config_text(path), path)


def read_config_text(path: Path) -> str:
    """The config file's text; a :class:`ConfigError` naming the file when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None


def parse_config(text: str, path: Path = Path("<config>")) -> NodeConfig:
    """Validate config text; errors name ``path:line``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = match.group(1) if match else str(max(len(text.splitlines()), 1))
        raise ConfigError(f"{path}:{line}: TOML syntax error: {exc}") from None
    for key in ("storage", "models"):  # relative paths are relative to the config file
        value = raw.get("node", {}).get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            raw["node"][key] = str((path.parent / value).resolve()) if path.exists() else value
    for table in [raw.get("tls"), *(raw.get("destinations") or [])]:  # TLS files too
        for key in ("certificate", "private_key", "ca_certificates"):
            value = table.get(key) if isinstance(table, dict) else None
            if isinstance(value, str) and not Path(value).is_absolute() and path.exists():
                table[key] = str((path.parent / value).resolve())
    try:
        return NodeConfig.model_validate(raw)
    except ValidationError as exc:
        err: dict[str, Any] = dict(exc.errors()[0])
        loc = _loc_from_message(err)
        msg = err["msg"].removeprefix("Value error, ")
        raise config_error(text, path, loc, msg, more=exc.error_count() - 1) from None


def config_error(text: str, path: Path, loc: tuple[str | int, ...], msg: str, *, more: int = 0) -> ConfigError:
    """The error for a problem at config path ``loc``: ``path:line: routes.1.match.Foo: msg``.

    ``text`` is the file's text (to find the line); ``more`` counts further problems not shown.
    """
    line = locate(text, loc)
    where = ".".join(str(p) for p in loc) or "(top level)"
    suffix = f" (and {more} more problem(s))" if more > 0 else ""
    return ConfigError(f"{path}:{line}: {where}: {msg}{suffix}")


def _loc_from_message(err: Any) -> tuple[str | int, ...]:
    """Location of a pydantic error; model validators put theirs at the start of the message."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in {"function-after"})))
    m = re.match(r"(?:Value error, )?(\w+)\[(\d+)\]: (?:(\w+): )?", err["msg"])  # "table[i]: [key: ]..."
    if m:
        loc = (*loc, m.group(1), int(m.group(2)), *([m.group(3)] if m.group(3) else []))
        err["msg"] = err["msg"][m.end() :]
    m = re.match(r"(?:Value error, )?(\w+)\.(\w+): ", err["msg"])  # "section.key: ..."
    if m:
        loc = (*loc, m.group(1), m.group(2))
        err["msg"] = err["msg"][m.end() :]
    key = re.search(r"match key '(\w+)'", err["msg"])
    if key:
        loc = (*loc, key.group(1))
    return loc


def locate(text: str, loc: tuple[str | int, ...]) -> int | str:
    """Best-effort line number of a config path such as ``("routes", 1, "match", "Modality")``.

    Walks the TOML text: ``[section]`` and ``[[array]]`` headers select the table (counting array
    entries), then ``key =`` lines inside it. Returns ``"?"`` when nothing matches.
    """
    lines = text.splitlines()
    header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    # Find the table the location points into.
    table: list[str | int] = []
    rest = list(loc)
    if rest and isinstance(rest[0], str):
        table.append(rest.pop(0))
        if rest and isinstance(rest[0], int):
            table.append(rest.pop(0))
    start, end = 0, len(lines)
    if table:
        count = -1
        found = None
        for i, line in enumerate(lines):
            m = header.match(line)
            if m and m.group(2) == table[0]:
                count += 1
                if len(table) == 1 or count == table[1]:
                    found = i
                    break
        if found is None:
            return "?"
        start = found
        end = next(
            (
                j
                for j in range(found + 1, len(lines))
                if (m := header.match(lines[j])) and not m.group(2).startswith(f"{table[0]}.")
            ),
            len(lines),
        )
    best: int = start + 1
    for key in (k for k in rest if isinstance(k, str)):
        for j in range(start, end):
            sub = header.match(lines[j])
            if sub and sub.group(2).endswith(f".{key}"):
                best = j + 1
                start = j
                break
            if re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", lines[j]):
                best = j + 1
                start = j
                break
    return best


def default_config_text() -> str:
    """The starter config written by ``dicom-node init``: the documented example that ships inside the package
    (``config/node.example.toml`` in a checkout is a link to it)."""
    from importlib.resources import files

    return (files("dicom_node") / "node.example.toml").read_text(encoding="utf-8")
