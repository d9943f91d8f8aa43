"""The Modbus PDU that RTU and TCP share: read functions, limits, register data.

MODBUS Application Protocol V1.1b3, 6.3/6.4: Read Holding (0x03) and Read
Input (0x04) registers, 1..125 registers per request, big-endian words.
"""

from micropython import const

FC_READ_HOLDING = const(0x03)
FC_READ_INPUT = const(0x04)
MAX_READ_REGS = const(125)


def check_read(function, address, count):
    """ValueError for a request no server may be sent (before touching the bus)."""
    if function != FC_READ_HOLDING and function != FC_READ_INPUT:
        raise ValueError("function")
    if not 1 <= count <= MAX_READ_REGS or not 0 <= address or address + count > 0x10000:
        raise ValueError("address/count")


def registers(data, count):
    """``count`` big-endian 16-bit register values from response data bytes."""
    return [(data[2 * i] << 8) | data[2 * i + 1] for i in range(count)]
