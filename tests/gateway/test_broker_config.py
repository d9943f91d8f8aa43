"""The production broker config (`metanoia gateway broker-config`) on the REAL Mosquitto.

Each test generates the complex's files from a device registry and starts
Mosquitto on exactly that config (TLS listener on a random loopback port). As
root, Mosquitto drops to the ``mosquitto`` user before it opens the password
file, ACL and key, so the files are handed to that user with ``--owner``, as
in production. Then: devices connect over TLS with their own credential and
publish their own telemetry; everything else a device might try against
another device's topics is refused, and so are bad credentials, anonymous and
plain-TCP clients; a revoked device loses its credential. Without any ACL the
gateway itself still refuses a reading published on another device's topic.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from gateway.broker import BrokerSettings, generate
from gateway.broker.passwords import hash_password, parse_password_file, verify_password
from gateway.broker.pki import load_or_create_ca
from gateway.cli import main as metanoia
from gateway.db import connect
from gateway.devices import DeviceRegistry
from hil.broker import Mosquitto, find_mosquitto, free_port

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="needs Mosquitto (./dev installs it)")

GRID = "oak-court"
NOT_AUTHORIZED = 0x87


class KeySigner:
    """The firmware's Signer interface over a ``cryptography`` key (fast, for tests)."""

    software = True

    def __init__(self, n: int) -> None:
        self.key = ec.derive_private_key(7000 + n, ec.SECP256R1())
        self.device_id = bytes.fromhex(f"d0{n:016x}")
        self.public_key = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]

    def sign_digest(self, digest: bytes) -> bytes:
        r, s = decode_dss_signature(self.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def reading(self, seq: int) -> bytes:
        from telemetry.cose import ReadingEncoder  # firmware, via the host shims (tests/conftest.py)

        return ReadingEncoder(self).encode(seq, 1_780_000_000 + 60 * seq, 1000 + seq, 0, 0, 250)


def provision(reg: DeviceRegistry, signer: KeySigner, grid: str = GRID) -> str:
    reg.add({"device_id": signer.device_id.hex(), "public_key": signer.public_key.hex(),
             "claim_code": f"CLAIM-{signer.device_id.hex()}", "profile": "sdm630", "grid": grid})
    return signer.device_id.hex()


def broker_user() -> str | None:
    """Whom Mosquitto runs as: as root it drops to 'mosquitto' before reading its files."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("mosquitto")
        return "mosquitto"
    except KeyError:
        return "nobody"


@dataclass
class Complex:
    base: Path
    out: Path
    run: Path
    reg: DeviceRegistry
    settings: BrokerSettings
    signers: dict[str, KeySigner]
    broker: Mosquitto | None = None
    clients: list[paho.Client] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.settings.port

    def regenerate(self) -> Any:
        return generate(self.reg, self.out, self.settings)

    def start(self) -> Mosquitto:
        self.broker = Mosquitto(self.run, port=self.port, extra_conf=(self.out / "mosquitto.conf").read_text(),
                                default_listener=False).start()
        return self.broker

    def password(self, user: str) -> str:
        data = json.loads((self.out / "credentials" / f"{user}.json").read_text())
        return str(data["mqtt"]["password"] if "mqtt" in data else data["password"])

    def topic(self, dev: str, leaf: str) -> str:
        return f"metanoia/{GRID}/{dev}/{leaf}"

    def connect(self, user: str | None, password: str | None = None, *, v5: bool = False, tls: bool = True,
                ca: Path | None = None, client_id: str | None = None) -> "Conn":
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or user or "anonymous",
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
        c.reconnect_delay_set(30, 60)  # no quiet reconnects behind a test's back
        if tls:
            c.tls_set(ca_certs=str(ca or self.out / "ca.crt"))
        if user is not None:
            c.username_pw_set(user, password if password is not None else self.password(user))
        conn = Conn(c)
        self.clients.append(c)
        try:
            c.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            conn.error = e
            conn.done.set()
            return conn
        c.loop_start()
        conn.done.wait(5)
        return conn

    def close(self) -> None:
        for c in self.clients:
            try:
                c.disconnect()
            except Exception:
                pass
        for c in self.clients:
            c.loop_stop()
        if self.broker:
            self.broker.close()


class Conn:
    """A paho client with what the broker answered recorded."""

    def __init__(self, c: paho.Client) -> None:
        self.c = c
        self.connack: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, Any] = {}
        self.subacks: dict[int, Any] = {}
        self.cond = threading.Condition()
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connack = rc
        self.done.set()

    def _on_disconnect(self, *_a: Any) -> None:
        self.disconnected.set()
        self.done.set()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any = None) -> None:
        with self.cond:
            self.pubacks[mid] = rc
            self.cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: Any, _p: Any = None) -> None:
        with self.cond:
            self.subacks[mid] = rcs
            self.cond.notify_all()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure and not self.disconnected.is_set()

    def wait(self, pred: Any, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> Any:
        """QoS 1; returns the PUBACK's reason code (MQTT 5) once it arrived."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        assert self.wait(lambda: info.mid in self.pubacks), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> Any:
        _rc, mid = self.c.subscribe(topic, qos=1)
        assert self.wait(lambda: mid in self.subacks), f"no SUBACK for {topic}"
        return self.subacks[mid]

    def received(self, topic: str) -> list[bytes]:
        with self.cond:
            return [p for t, p in self.messages if t == topic]


@pytest.fixture
def cx() -> Iterator[Complex]:
    """A registry with devices A and B active and C revoked, the broker config generated."""
    # Not under pytest's tmp_path (mode 0700 as root): the broker's user must reach these files.
    base = Path(tempfile.mkdtemp(prefix="metanoia-broker-"))
    os.chmod(base, 0o711)
    run = base / "run"
    run.mkdir()
    owner = broker_user()
    if owner:
        shutil.chown(run, owner)
    reg = DeviceRegistry(connect(base / "gateway.db"))
    signers = {}
    for n in (1, 2, 3):
        s = KeySigner(n)
        signers[provision(reg, s)] = s
    c_id = KeySigner(3).device_id.hex()
    reg.revoke(c_id, "meter replaced")
    settings = BrokerSettings(grid=GRID, hostnames=("127.0.0.1", "localhost"), port=free_port(), bind="127.0.0.1",
                              owner=owner, gateway_clients=2)
    cplx = Complex(base, base / "out", run, reg, settings, signers)
    cplx.regenerate()
    try:
        yield cplx
    finally:
        cplx.close()
        reg.conn.close()
        shutil.rmtree(base, ignore_errors=True)


def ids(cx: Complex) -> tuple[str, str, str]:
    a, b, c = (KeySigner(n).device_id.hex() for n in (1, 2, 3))
    return a, b, c


# -- the files --------------------------------------------------------------------------------

def test_generated_files_have_the_right_content_and_permissions(cx: Complex):
    a, b, c = ids(cx)
    out = cx.out
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert mode == {"mosquitto.conf": 0o644, "ca.crt": 0o644, "server.crt": 0o644, "ca.key": 0o600,
                    "server.key": 0o600, "passwd": 0o600, "acl": 0o600, "credentials": 0o700}
    creds = sorted(p.name for p in (out / "credentials").iterdir())
    assert creds == sorted([f"{a}.json", f"{b}.json", "gateway.json", "gateway-2.json"])  # revoked C: none
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (out / "credentials").iterdir())
    if cx.settings.owner:  # the broker reads passwd/acl/server.key; the CA key stays with root
        assert pwd.getpwuid((out / "passwd").stat().st_uid).pw_name == cx.settings.owner
        assert (out / "ca.key").stat().st_uid == os.geteuid()
    hashes = parse_password_file((out / "passwd").read_text())
    assert set(hashes) == {a, b, "gateway", "gateway-2"}
    assert all(h.startswith("$7$") for h in hashes.values())
    assert verify_password(cx.password(a), hashes[a]) and not verify_password(cx.password(b), hashes[a])
    conf = (out / "mosquitto.conf").read_text().splitlines()
    for line in ("allow_anonymous false", "persistence true", "max_queued_messages 0", "set_tcp_nodelay true",
                 "tls_version tlsv1.2", f"password_file {out}/passwd", f"acl_file {out}/acl",
                 f"listener {cx.port} 127.0.0.1", "use_username_as_clientid true"):
        assert line in conf
    # Listener options after the listener line (before it they would open a plain 1883 listener).
    assert conf.index("use_username_as_clientid true") > conf.index(f"listener {cx.port} 127.0.0.1")
    acl = (out / "acl").read_text()
    assert f"user {a}\ntopic write metanoia/{GRID}/{a}/tele\n" in acl and c not in acl
    # Nothing secret is in the world-readable files.
    public = "".join((out / n).read_text() for n in ("mosquitto.conf", "ca.crt", "server.crt"))
    assert cx.password(a) not in public and "PRIVATE" not in public


def test_regeneration_is_idempotent_and_rotation_changes_only_the_rotated_password(cx: Complex):
    a, b, _ = ids(cx)
    before = {p.relative_to(cx.out): p.read_bytes() for p in cx.out.rglob("*") if p.is_file()}
    again = cx.regenerate()
    assert (again.ca_created, again.server_issued, again.new_credentials, again.changed_files) == \
        (False, False, (), ())
    assert {p.relative_to(cx.out): p.read_bytes() for p in cx.out.rglob("*") if p.is_file()} == before
    old_a, old_b = cx.password(a), cx.password(b)
    rotated = generate(cx.reg, cx.out, cx.settings, rotate=[a])
    assert rotated.new_credentials == (a,)
    assert cx.password(a) != old_a and cx.password(b) == old_b
    assert (cx.out / "ca.crt").read_bytes() == before[Path("ca.crt")]


def test_our_password_hashes_and_mosquitto_passwd_agree(tmp_path: Path):
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.skip("mosquitto_passwd not installed")
    f = tmp_path / "pw"
    f.write_text("")
    subprocess.run([exe, "-b", str(f), "alice", "s3cret-pw"], check=True, capture_output=True)
    theirs = parse_password_file(f.read_text())["alice"]
    assert theirs.startswith("$7$")
    assert verify_password("s3cret-pw", theirs) and not verify_password("s3cret-px", theirs)
    salt_ours = hash_password("s3cret-pw", salt=b"\x01" * 12)
    assert verify_password("s3cret-pw", salt_ours) and not verify_password("other", salt_ours)


# -- the broker -------------------------------------------------------------------------------

def test_a_device_publishes_its_own_tele_over_tls_and_the_gateway_receives_it(cx: Complex):
    a, _, _ = ids(cx)
    cx.start()
    gw = cx.connect("gateway")
    assert gw.accepted
    gw.subscribe(f"metanoia/{GRID}/+/tele")
    # Several gateway processes share the stream (shared NOTES), one credential each.
    shared = cx.connect("gateway-2")
    assert shared.accepted
    shared.subscribe(f"$share/ingest/metanoia/{GRID}/+/tele")
    dev = cx.connect(a)
    assert dev.accepted, dev.connack
    msg = cx.signers[a].reading(1)
    dev.publish(cx.topic(a, "tele"), msg)
    assert gw.wait(lambda: gw.received(cx.topic(a, "tele")))
    assert shared.wait(lambda: shared.received(cx.topic(a, "tele")))
    assert gw.received(cx.topic(a, "tele")) == shared.received(cx.topic(a, "tele")) == [msg]
    assert dev.publish(cx.topic(a, "state"), b"online", retain=True).value == 0


def test_a_device_cannot_publish_as_another_device_or_as_the_gateway(cx: Complex):
    a, b, _ = ids(cx)
    cx.start()
    gw = cx.connect("gateway")
    gw.subscribe("metanoia/#")
    other = cx.connect(b)
    other.subscribe(cx.topic(b, "ack"))
    other.subscribe(cx.topic(b, "cmd"))
    forged = cx.signers[a].reading(5)
    refused = {}
    for t in (cx.topic(b, "tele"), cx.topic(b, "state"),   # B's own topics
              cx.topic(b, "ack"), cx.topic(b, "cmd"),      # the gateway's to B
              cx.topic(a, "ack"), cx.topic(a, "cmd"),      # the gateway's to A: no acknowledging itself
              f"metanoia/elm-row/{a}/tele", "metanoia/x", "$SYS/broker/x"):
        # One connection per attempt: Mosquitto 2.0 closes the connection after a refused
        # publish (eclipse-mosquitto/mosquitto#2579).
        dev = cx.connect(a, v5=True)
        assert dev.accepted
        refused[t] = dev.publish(t, forged).value
        dev.c.disconnect()
    assert refused == dict.fromkeys(refused, NOT_AUTHORIZED)
    dev = cx.connect(a, v5=True)
    # The gateway side: nothing of it arrived. A's own reading, published after, does.
    own = cx.signers[a].reading(6)
    assert dev.publish(cx.topic(a, "tele"), own).value == 0
    assert gw.wait(lambda: gw.received(cx.topic(a, "tele")))
    assert gw.messages == [(cx.topic(a, "tele"), own)]
    assert other.messages == []


def test_mqtt311_forgery_is_acknowledged_then_dropped_and_the_forger_disconnected(cx: Complex):
    """MQTT 3.1.1 has no reason codes: Mosquitto 2.0 sends the PUBACK, drops the message
    and closes the connection (eclipse-mosquitto/mosquitto#2579)."""
    a, b, _ = ids(cx)
    cx.start()
    gw = cx.connect("gateway")
    gw.subscribe(f"metanoia/{GRID}/+/tele")
    dev = cx.connect(a)
    dev.publish(cx.topic(b, "tele"), cx.signers[a].reading(1))
    assert dev.disconnected.wait(5)
    dev = cx.connect(a)
    own = cx.signers[a].reading(2)
    dev.publish(cx.topic(a, "tele"), own)
    assert gw.wait(lambda: gw.received(cx.topic(a, "tele")))
    assert gw.messages == [(cx.topic(a, "tele"), own)]


def test_a_device_cannot_read_another_devices_ack_cmd_or_tele(cx: Complex):
    a, b, _ = ids(cx)
    cx.start()
    gw = cx.connect("gateway")
    gw.publish(cx.topic(b, "ack"), cbor2.dumps(41), retain=True)   # retained before A subscribes
    spy = cx.connect(a)
    for t in (cx.topic(b, "ack"), cx.topic(b, "cmd"), f"metanoia/{GRID}/+/tele", f"metanoia/{GRID}/#",
              cx.topic(a, "ack")):
        spy.subscribe(t)   # Mosquitto 2.0 grants it (3.1.1) and filters every delivery by the ACL
    victim = cx.connect(b)
    victim.subscribe(cx.topic(b, "cmd"))
    gw.publish(cx.topic(b, "cmd"), b'{"interval_s": 30}')
    victim.publish(cx.topic(b, "tele"), cx.signers[b].reading(1))
    gw.publish(cx.topic(a, "ack"), cbor2.dumps(7))                   # the barrier: A may read this
    assert spy.wait(lambda: spy.received(cx.topic(a, "ack")))
    assert victim.wait(lambda: victim.received(cx.topic(b, "cmd")))
    assert {t for t, _ in spy.messages} == {cx.topic(a, "ack")}


def test_a_device_cannot_take_over_another_devices_session(cx: Complex):
    a, b, _ = ids(cx)
    cx.start()
    victim = cx.connect(b)
    assert victim.accepted
    thief = cx.connect(a, client_id=b)           # B's client id, A's credential
    assert thief.accepted
    assert victim.publish(cx.topic(b, "tele"), cx.signers[b].reading(1)).value == 0
    assert not victim.disconnected.is_set()      # the broker used A's username as its client id


@pytest.mark.parametrize("case", ["wrong_password", "unknown_user", "anonymous", "gateway_with_device_password",
                                  "revoked_device"])
def test_bad_credentials_are_refused(cx: Complex, case: str):
    a, _, c = ids(cx)
    cx.start()
    good = cx.password(a)
    user, password = {"wrong_password": (a, good[:-1] + ("y" if good.endswith("x") else "x")),
                      "unknown_user": ("d0ffffffffffffffff", cx.password(a)),
                      "anonymous": (None, None),
                      "gateway_with_device_password": ("gateway", cx.password(a)),
                      "revoked_device": (c, cx.password(a))}[case]
    conn = cx.connect(user, password)
    assert conn.done.is_set() and not conn.accepted
    assert conn.connack is not None and conn.connack.is_failure   # a CONNACK refusal, not a timeout
    assert cx.connect(a).accepted                                 # while the right credential works


def test_plain_tcp_and_an_untrusted_server_are_refused(cx: Complex, tmp_path: Path):
    a, _, _ = ids(cx)
    cx.start()
    plain = cx.connect(a, tls=False)
    assert not plain.accepted and plain.connack is None
    # A raw MQTT CONNECT in clear text gets no CONNACK, only a closed connection.
    with socket.create_connection(("127.0.0.1", cx.port), timeout=5) as s:
        cid = b"plain"
        s.sendall(bytes([0x10, 12 + len(cid)]) + b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid)
        try:
            reply = s.recv(4)
        except (ConnectionResetError, socket.timeout):
            reply = b""
        assert not reply.startswith(b"\x20")
    # A client that trusts another CA refuses the broker (and sends no password).
    other_ca = tmp_path / "other"
    other_ca.mkdir()
    load_or_create_ca(other_ca, "elsewhere")
    rogue = cx.connect(a, ca=other_ca / "ca.crt")
    assert isinstance(rogue.error, ssl.SSLCertVerificationError)


def test_revoking_a_device_removes_its_credential_and_a_reload_disconnects_it(cx: Complex):
    a, b, _ = ids(cx)
    cx.start()
    assert cx.broker is not None and cx.broker.proc is not None
    old_b = cx.password(b)
    dev_a, dev_b = cx.connect(a), cx.connect(b)
    assert dev_a.accepted and dev_b.accepted
    cx.reg.revoke(b, "tamper switch")
    result = cx.regenerate()
    assert result.removed_credentials == (b,) and set(result.changed_files) == {"passwd", "acl"}
    assert not (cx.out / "credentials" / f"{b}.json").exists()
    assert b not in (cx.out / "passwd").read_text() and b not in (cx.out / "acl").read_text()
    cx.broker.proc.send_signal(signal.SIGHUP)          # systemctl reload mosquitto
    assert dev_b.disconnected.wait(5)
    again = cx.connect(b, old_b)
    assert again.connack is not None and again.connack.is_failure
    assert dev_a.publish(cx.topic(a, "tele"), cx.signers[a].reading(1)).value == 0
    assert not dev_a.disconnected.is_set()


def test_cli_generates_reuses_and_rotates(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    db = tmp_path / "gw.db"
    reg = DeviceRegistry(connect(db))
    a = provision(reg, KeySigner(1))
    reg.conn.close()
    out = tmp_path / "broker"
    argv = ["gateway", "broker-config", "--db", str(db), "--out", str(out), "--grid", GRID,
            "--hostname", "gw.oak-court.example", "--hostname", "10.0.0.2", "--json"]
    assert metanoia(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["devices"] == [a] and first["ca_created"] and first["server_issued"]
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.oak-court.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert metanoia(argv) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (second["ca_created"], second["server_issued"], second["changed_files"]) == (False, False, [])
    assert metanoia(argv + ["--rotate", a]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["new_credentials"] == [a]
    assert metanoia(argv + ["--rotate", "d0ffffffffffffffff"]) == 2
    assert "cannot rotate" in capsys.readouterr().err
    assert metanoia(argv[:-1] + ["--grid", "bad/grid"]) == 2


# -- without the ACL --------------------------------------------------------------------------

def test_without_an_acl_the_gateway_still_rejects_a_reading_on_another_devices_topic():
    """A permissive broker (anonymous, no ACL): device A's signed reading published on
    B's topic is counted as a topic mismatch and stored under neither device."""
    from gateway.aggregator.collector import Collector

    sa, sb = KeySigner(1), KeySigner(2)
    a, b = sa.device_id.hex(), sb.device_id.hex()
    with Mosquitto() as broker:
        col = Collector(broker.host, broker.port, GRID, keys={sa.device_id: sa.public_key,
                                                              sb.device_id: sb.public_key}).start()
        try:
            pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="attacker")
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            pub.publish(f"metanoia/{GRID}/{b}/tele", sa.reading(1), qos=1).wait_for_publish(5)
            pub.publish(f"metanoia/{GRID}/{b}/tele", sb.reading(1), qos=1).wait_for_publish(5)
            pub.publish(f"metanoia/{GRID}/{a}/tele", sa.reading(2), qos=1).wait_for_publish(5)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (col.seqs(sb.device_id) and col.seqs(sa.device_id)):
                time.sleep(0.01)
            assert col.topic_mismatch == 1
            assert col.seqs(sb.device_id) == [1]      # B's genuine reading only
            assert col.seqs(sa.device_id) == [2]      # A's seq 1 went nowhere
            pub.loop_stop()
            pub.disconnect()
        finally:
            col.stop()


# -- the firmware over TLS ----------------------------------------------------------------------

def _sim_device(cx: Complex, n: int, rig: Any, clock: Any, ca: Path) -> Any:
    """A simulated device (the firmware on CPython) with a key we know, TLS, its own password."""
    from secure_sign.software import encode_key_file

    from hil.device_sim import build_device

    signer = KeySigner(n)
    work = cx.base / f"dev{n}"
    work.mkdir()
    (work / "devkey.bin").write_bytes(encode_key_file(signer.device_id,
                                                      signer.key.private_numbers().private_value.to_bytes(32, "big")))
    dev_id = signer.device_id.hex()
    password = cx.password(dev_id) if (cx.out / "credentials" / f"{dev_id}.json").exists() else "none"
    return build_device(f"h{n}", rig.endpoints["h"], work, clock, grid=GRID, mqtt=("127.0.0.1", cx.port),
                        mqtt_options={"user": dev_id, "password": password, "ssl": True, "ca_file": str(ca)})


def test_a_simulated_device_publishes_through_the_tls_broker_and_reads_its_ack(cx: Complex, tmp_path: Path):
    from gateway.telemetry.decode import decode_message, verify
    from hil.device_sim import wait_for
    from hil.modbus_rig import RigHousehold, VirtualRig
    from hil.physics import Household, ManualClock

    a, _, _ = ids(cx)
    cx.start()
    gw = cx.connect("gateway")
    gw.subscribe(f"metanoia/{GRID}/+/tele")
    clock = ManualClock(1_780_000_000.0)
    with VirtualRig([RigHousehold(Household("h", kwp=4.0, seed=3), meter="sunspec", pace=False)],
                    clock=clock) as rig:
        sim = _sim_device(cx, 1, rig, clock, cx.out / "ca.crt")
        assert sim.device_id.hex() == a
        clock.advance(60)
        seq = sim.device.sample()
        assert wait_for(lambda: gw.received(cx.topic(a, "tele")), [sim], 15), sim.device.counters
        (msg,) = gw.received(cx.topic(a, "tele"))
        reading = verify(decode_message(msg)[0], cx.reg.require(a).public_key)
        assert reading.seq == seq and reading.device_id.hex() == a
        gw.publish(cx.topic(a, "ack"), cbor2.dumps(seq), retain=True)
        assert wait_for(lambda: sim.device.acked == seq, [sim], 15)
        assert sim.device.counters["connect_failures"] == 0


def test_a_device_that_trusts_another_ca_or_has_no_credential_never_connects(cx: Complex, tmp_path: Path):
    from hil.device_sim import wait_for
    from hil.modbus_rig import RigHousehold, VirtualRig
    from hil.physics import Household, ManualClock

    cx.start()
    gw = cx.connect("gateway")
    gw.subscribe(f"metanoia/{GRID}/+/tele")
    other = tmp_path / "rogue-ca"
    other.mkdir()
    load_or_create_ca(other, "rogue")
    clock = ManualClock(1_780_000_000.0)
    with VirtualRig([RigHousehold(Household("h", kwp=0.0, seed=4), meter="sunspec", pace=False)],
                    clock=clock) as rig:
        untrusting = _sim_device(cx, 1, rig, clock, other / "ca.crt")      # right password, wrong CA
        unknown = _sim_device(cx, 4, rig, clock, cx.out / "ca.crt")        # not provisioned: no password
        why: dict[str, list[str]] = {"untrusting": [], "unknown": []}
        untrusting.device.log = lambda *a: why["untrusting"].append(" ".join(map(str, a)))
        unknown.device.log = lambda *a: why["unknown"].append(" ".join(map(str, a)))
        for sim in (untrusting, unknown):
            clock.advance(60)
            sim.device.sample()
        # Wait for the evidence itself: on a loaded machine a first attempt can time out
        # waiting for the CONNACK before the broker's refusal arrives; the device retries.
        wait_for(lambda: any("CERTIFICATE_VERIFY_FAILED" in w for w in why["untrusting"])
                 and any("MQTTException" in w for w in why["unknown"]), [untrusting, unknown], 60)
        assert untrusting.device.counters["connects"] == unknown.device.counters["connects"] == 0
        assert untrusting.device.counters["connect_failures"] >= 1
        assert unknown.device.counters["connect_failures"] >= 1
    assert any("CERTIFICATE_VERIFY_FAILED" in w for w in why["untrusting"]), why
    assert any("MQTTException" in w for w in why["unknown"]), why   # the broker's CONNACK refusal
    assert gw.messages == []
