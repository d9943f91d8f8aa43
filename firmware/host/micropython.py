"""CPython stand-in for MicroPython's ``micropython`` module (host shim)."""


def const(value):
    return value


def mem_info(*_args):
    return None


def opt_level(*_args):
    return 0
