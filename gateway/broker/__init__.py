"""The complex's production MQTT broker: PKI, credentials, ACL and Mosquitto config.

``metanoia gateway broker-config`` (``config.generate``) writes them from the
device registry; docs/broker.md explains the files and how to install them.
"""

from .config import BrokerConfig, BrokerConfigError, BrokerSettings, generate
from .pki import PkiError, ServerNames

__all__ = ["BrokerConfig", "BrokerConfigError", "BrokerSettings", "PkiError", "ServerNames", "generate"]
