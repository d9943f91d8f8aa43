"""``umqtt.simple`` of the emulated board: no network, every connect fails."""


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None):
        self.server = server

    def connect(self, clean_session=True):
        raise OSError(113)
