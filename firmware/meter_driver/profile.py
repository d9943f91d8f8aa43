"""Register profiles: JSON files in ``profiles/`` that describe a meter as data.

A profile is a dict with ``name``, ``kind`` (``"eastron"`` or ``"sunspec"``),
``bus`` (default bus settings: ``baudrate``, ``bits``, ``parity`` "N"/"E"/"O",
``stop``, ``function`` 3 or 4, ``max_regs`` per request, ``timeout_ms``,
``retries``, ``unit``) and the register map (``points`` for Eastron,
``bases`` + ``models`` for SunSpec). docs/meter-driver.md has the format.

``load_profile(name_or_path)`` returns the validated dict or raises
``ProfileError``; ``bus_settings(profile, overrides)`` merges the device
config over the profile's defaults, so a meter re-configured to another baud
rate needs a config line, not a new profile.
"""

import json
import os

from meter_driver.errors import ProfileError

_KINDS = ("eastron", "sunspec")
_PARITY = {"N": None, "E": 0, "O": 1, None: None}


def profile_dir():
    f = __file__
    i = f.rfind("/")
    return (f[:i] if i >= 0 else ".") + "/profiles"


def list_profiles():
    return sorted(n[:-5] for n in os.listdir(profile_dir()) if n.endswith(".json"))


def load_profile(name):
    """Load ``profiles/NAME.json`` (or a path ending in .json) and validate it."""
    path = name if name.endswith(".json") else profile_dir() + "/" + name + ".json"
    try:
        with open(path) as f:
            p = json.load(f)
    except OSError:
        raise ProfileError("no profile %r (have: %s)" % (name, ", ".join(list_profiles())))
    except ValueError as e:
        raise ProfileError("profile %r is not valid JSON: %s" % (name, e))
    validate(p)
    return p


def _need(cond, what):
    if not cond:
        raise ProfileError(what)


def validate(p):
    """Raise ProfileError unless ``p`` is a profile the readers can execute."""
    _need(isinstance(p, dict), "profile must be an object")
    _need(p.get("kind") in _KINDS, "kind must be one of %s" % (_KINDS,))
    bus = p.get("bus")
    _need(isinstance(bus, dict), "bus settings missing")
    _need(bus.get("function") in (3, 4), "bus.function must be 3 or 4")
    m = bus.get("max_regs")
    _need(isinstance(m, int) and 2 <= m <= 125, "bus.max_regs must be 2..125")
    _need(bus.get("parity", "N") in _PARITY, "bus.parity must be N, E or O")
    if p["kind"] == "eastron":
        pts = p.get("points")
        _need(isinstance(pts, list) and pts, "points missing")
        for pt in pts:
            _need(isinstance(pt.get("key"), str), "point without key")
            a = pt.get("addr")
            _need(isinstance(a, int) and 0 <= a <= 0xFFFE, "point %s: bad addr" % pt.get("key"))
    else:
        bases = p.get("bases")
        _need(isinstance(bases, list) and bases, "bases missing")
        models = p.get("models")
        _need(isinstance(models, list) and models, "models missing")
        for md in models:
            _need(isinstance(md.get("ids"), list) and isinstance(md.get("length"), int), "model without ids/length")
            for pt in md.get("points", ()):
                off = pt.get("offset")
                _need(isinstance(off, int) and 0 <= off < md["length"], "point %s: bad offset" % pt.get("name"))


def bus_settings(profile, overrides=None):
    """The profile's bus settings with ``overrides`` (None values ignored) on top."""
    b = dict(profile["bus"])
    if overrides:
        for k in overrides:
            if overrides[k] is not None:
                b[k] = overrides[k]
    return b


def uart_parity(parity):
    """Profile parity letter to MicroPython's ``UART(parity=...)`` (None, 0 even, 1 odd)."""
    if parity not in _PARITY:
        raise ProfileError("parity %r" % (parity,))
    return _PARITY[parity]


def units(profile):
    """Map each output key to its unit string."""
    u = {}
    if profile["kind"] == "eastron":
        for pt in profile["points"]:
            u[pt["key"]] = pt.get("unit", "")
    else:
        for md in profile["models"]:
            for pt in md.get("points", ()):
                if pt.get("key"):
                    u[pt["key"]] = pt.get("unit", "")
    return u


def counter_keys(profile):
    """Output keys of cumulative counters (checked for going backwards)."""
    if profile["kind"] == "eastron":
        pts = profile["points"]
    else:
        pts = [pt for md in profile["models"] for pt in md.get("points", ())]
    return tuple(pt["key"] for pt in pts if pt.get("counter"))
