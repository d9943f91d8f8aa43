"""Device MQTT over TLS: the app builds a verifying SSLContext for umqtt.simple
(which wants a context, not a bool), and the config refuses TLS without a CA.
The end-to-end run through the production broker is in
tests/gateway/test_broker_config.py."""

import json
import ssl

import pytest

from device import app, config
from umqtt.simple import MQTTClient


def test_tls_without_a_ca_file_is_refused_at_boot(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"mqtt": {"ssl": True, "port": 8883}}))
    with pytest.raises(config.ConfigError, match="ca_file"):
        config.load(str(p))


def test_no_tls_means_no_context():
    assert app.open_tls(config.DEFAULTS["mqtt"]) is None


def test_the_context_requires_a_certificate_signed_by_the_ca(tmp_path):
    from gateway.broker.pki import load_or_create_ca

    _key, cert, _ = load_or_create_ca(tmp_path, "t")
    m = config.merge(config.DEFAULTS["mqtt"], {"ssl": True, "ca_file": str(tmp_path / "ca.crt")})
    ctx = app.open_tls(m)
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [int(c["serialNumber"], 16) for c in ctx.get_ca_certs()] == [cert.serial_number]


def test_host_umqtt_takes_a_context_like_micropython_lib_and_refuses_a_bool():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c = MQTTClient("dev", "127.0.0.1", ssl=ctx)
    assert c.port == 8883 and c.ssl is ctx
    assert MQTTClient("dev", "127.0.0.1").port == 1883
    with pytest.raises(TypeError):
        MQTTClient("dev", "127.0.0.1", ssl=True)
