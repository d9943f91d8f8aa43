"""CPython stand-in for micropython-lib's ``umqtt.simple`` (host shim).

Same surface as the device library (``MQTTClient`` with connect, publish,
subscribe, set_callback, set_last_will, check_msg, wait_msg, ping, disconnect;
errors as ``OSError``), implemented over paho-mqtt so the firmware talks to a
real broker on the host. QoS 1 publishes block until the PUBACK, as umqtt does.
"""

import collections
import socket
import threading

import paho.mqtt.client as paho


class MQTTException(Exception):
    pass


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None):
        # As in micropython-lib: ``ssl`` is an SSLContext (connect() wraps the socket
        # with it, server_hostname=server) or None; a bool is a programming error.
        if ssl is not None and not hasattr(ssl, "wrap_socket"):
            raise TypeError("ssl must be an SSLContext or None, not %r" % (ssl,))
        self.client_id = client_id if isinstance(client_id, str) else client_id.decode()
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.ssl = ssl
        self.keepalive = keepalive or 60
        self._user = user
        self._password = password
        self._cb = None
        self._lw = None
        self._inbox = collections.deque()
        self._connected = threading.Event()
        self._lost = False
        self._client = None
        self.timeout = 10.0

    def set_callback(self, f):
        self._cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self._lw = (topic, msg, retain, qos)

    def _on_message(self, _c, _u, m):
        self._inbox.append((m.topic.encode(), bytes(m.payload)))

    def _on_socket_open(self, _c, _u, sock):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def _on_connect(self, _c, _u, _flags, reason_code, _props=None):
        self._connack = reason_code
        self._connected.set()

    def _on_disconnect(self, client, *_a):
        # umqtt never reconnects by itself: the firmware notices the error on its
        # next call, reconnects and subscribes again. Stop paho's auto-reconnect,
        # which would otherwise revive a session without our subscriptions.
        self._lost = True
        self._connected.clear()
        try:
            client.disconnect()
        except Exception:
            pass

    def connect(self, clean_session=True, timeout=None):
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=clean_session)
        if self.ssl is not None:
            c.tls_set_context(self.ssl)
        if self._user is not None:
            c.username_pw_set(self._user, self._password)
        if self._lw:
            t, m, r, q = self._lw
            c.will_set(_s(t), m, qos=q, retain=r)
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_disconnect = self._on_disconnect
        c.on_connect = self._on_connect
        self._connack = None
        self._lost = False
        try:
            c.connect(self.server, self.port, keepalive=self.keepalive)
        except (OSError, ValueError) as e:  # ssl.SSLError (bad certificate) is an OSError
            raise OSError(111, "connect failed: %s" % e)
        c.loop_start()
        if not self._connected.wait(timeout or self.timeout):
            c.loop_stop()
            raise OSError(110, "ETIMEDOUT waiting for CONNACK")
        if self._connack is not None and self._connack.is_failure:
            # umqtt raises MQTTException(return code) on a refused CONNACK.
            c.loop_stop()
            self._connected.clear()
            raise MQTTException(self._connack.value)
        self._client = c
        return False

    def _require(self):
        if self._client is None or self._lost or not self._connected.is_set():
            raise OSError(104, "ECONNRESET")
        return self._client

    def disconnect(self):
        c = self._client
        self._client = None
        if c is not None:
            try:
                c.disconnect()
            finally:
                c.loop_stop()

    def close(self):
        """Drop the connection without a DISCONNECT (the broker sends the will)."""
        c = self._client
        self._client = None
        if c is not None:
            c.loop_stop()
            sock = c.socket()
            if sock is not None:
                sock.close()

    def ping(self):
        self._require()

    def publish(self, topic, msg, retain=False, qos=0):
        c = self._require()
        info = c.publish(_s(topic), bytes(msg), qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise OSError(104, "publish failed rc=%d" % info.rc)
        if qos:
            try:
                info.wait_for_publish(self.timeout)
            except RuntimeError as e:
                raise OSError(104, str(e))
            if not info.is_published():
                raise OSError(110, "ETIMEDOUT waiting for PUBACK")

    def subscribe(self, topic, qos=0):
        c = self._require()
        rc, _mid = c.subscribe(_s(topic), qos)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise MQTTException(rc)

    def check_msg(self):
        self._require()
        if self._inbox:
            topic, msg = self._inbox.popleft()
            if self._cb:
                self._cb(topic, msg)

    def wait_msg(self):
        self.check_msg()


def _s(topic):
    return topic.decode() if isinstance(topic, (bytes, bytearray)) else topic
