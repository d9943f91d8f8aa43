# MicroPython build manifest for the Metanoia meter image (ESP32).
#
# Read by MicroPython's build (tools/manifestfile.py), never on the device:
#   make BOARD=... FROZEN_MANIFEST=/path/to/firmware/board/manifest.py
# Paths are relative to this file, so ".." is firmware/. docs/esp32-bench.md
# has the whole build, with the partition table beside this file.
#
# Frozen modules run from flash (less RAM than .py files on the file system).
# A .py file of the same name on the file system is found first ("" comes
# before ".frozen" in sys.path), so a device can still be updated with mpremote.
#
# Not frozen:
# - main.py: a frozen main.py always runs in place of the one on the file
#   system, so a device could not be stopped for service. Copying main.py
#   arms a device; deleting it gives a quiet REPL.
# - firmware/host (CPython shims) and this folder (build inputs).
# - the Modbus profiles (meter_driver/profiles/*.json): data files, which a
#   manifest cannot freeze; profile.py reads them beside its __file__, so they
#   go on the file system (docs/esp32-bench.md, "Building the image").

include("$(PORT_DIR)/boards/manifest.py")

# The port manifest already requires it on the ESP32; named here because the
# firmware cannot run without it (a second require is a no-op).
require("umqtt.simple")
# ssl.SSLContext over the tls module (MicroPython >= 1.23), for MQTT over TLS.
require("ssl")

package("device", base_path="..")
package("meter_driver", base_path="..")
package("secure_sign", base_path="..")
package("storage", base_path="..")
package("telemetry", base_path="..")
