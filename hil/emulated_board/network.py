"""``network`` of the emulated board: a station interface that never connects."""

STA_IF = 0


class WLAN:
    def __init__(self, iface):
        self._active = False

    def active(self, on=None):
        if on is not None:
            self._active = on
        return self._active

    def connect(self, ssid, password=None):
        pass

    def isconnected(self):
        return False
