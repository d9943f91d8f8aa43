"""Meter drivers: Modbus RTU/TCP masters and register profiles as data.

Modules (import what you need; nothing is imported here, to keep RAM low):

- ``meter_driver.errors``: the ``ModbusError`` hierarchy shared by both buses.
- ``meter_driver.modbus_rtu``: ``ModbusRTU`` master on a UART + RS485 DE pin.
- ``meter_driver.modbus_tcp``: ``ModbusTCP`` client over ``socket``.
- ``meter_driver.profile``: loads ``profiles/*.json`` (register maps, bus settings).
- ``meter_driver.eastron`` / ``meter_driver.sunspec``: readers driven by a profile.
- ``meter_driver.meter``: ``Meter``, the facade the device loop calls.
"""
