"""``ssl`` of the emulated board: contexts can be made (the config is checked), never used."""

PROTOCOL_TLS_CLIENT = 2
CERT_REQUIRED = 2


class SSLContext:
    def __init__(self, protocol):
        self.verify_mode = 0

    def load_verify_locations(self, cafile=None, cadata=None):
        open(cafile).close()
