"""CPython stand-in for MicroPython's ``network`` module (host shim).

The host is already on a network, so ``WLAN`` connects at once; tests can
take the link down with ``set_link(False)`` to model a Wi-Fi outage.
"""

STA_IF = 0
AP_IF = 1
_link = [True]


def set_link(up):
    _link[0] = bool(up)


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False
        self._ssid = None

    def active(self, flag=None):
        if flag is None:
            return self._active
        self._active = bool(flag)
        return None

    def connect(self, ssid=None, key=None, **_kw):
        self._ssid = ssid

    def disconnect(self):
        self._ssid = None

    def isconnected(self):
        return self._active and _link[0]

    def status(self, *_args):
        return 1010 if self.isconnected() else 1001

    def ifconfig(self, *_args):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **_kw):
        if args and args[0] == "mac":
            return b"\x02\x00\x00\x00\x00\x01"
        return None
