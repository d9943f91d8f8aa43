"""ESP32 entry point: MicroPython runs boot.py, then this file.

Everything lives in ``device.app`` so the same code runs in simulation; an
unexpected error reboots the device (readings are safe in flash), after a
pause that keeps a crash loop from wearing the flash or flooding the broker.
"""

import time

import machine

try:
    from device import app

    app.main()
except Exception as e:  # last resort: log, wait, reset
    print("fatal:", repr(e))
    time.sleep(10)
    machine.reset()
