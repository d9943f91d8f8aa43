"""Hardware-in-the-loop rigs: the virtual rig (meters, inverter, secure element,
flash) that CI runs, and scripts for a bench ESP32 with a USB-RS485 adapter."""
