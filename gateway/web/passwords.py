"""Logins (an email or a phone number) and passwords: normalised, checked, hashed.

Password rules follow NIST SP 800-63B: a length floor, no composition rules,
refuse the commonest passwords and ones built from the login. Hashes are
argon2id (argon2-cffi), re-hashed on sign-in when the configured cost changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.web.config import Argon2Cost

MIN_PASSWORD = 10
MAX_PASSWORD = 128
MAX_EMAIL = 254

# The commonest passwords that are at least MIN_PASSWORD long (public breach lists); data, not code.
COMMON_PASSWORDS = frozenset("""
1234567890 0123456789 1111111111 0000000000 1234512345 qwertyuiop password1 password12 password123
password1234 iloveyou12 qwerty1234 1q2w3e4r5t 1qaz2wsx3edc qwertyuiop1 asdfghjkl1 zxcvbnm123 abcd123456
abc1234567 a123456789 123456789a 1234567890a passw0rd12 letmein123 welcome123 sunshine12 princess12
football12 baseball12 superman12 iloveyou123 trustno1234 changeme12 administrator 1234qwer!@ qwer1234!@
""".split())

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_PHONE_CHARS = re.compile(r"[\s().-]")


class AccountInputError(ValueError):
    """A login or password the service refuses; ``reason`` is a short code, the message is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def normalise_login(text: str, phone_country: str = "82") -> str:
    """An email in lower case, or a phone number as +<country><digits> (E.164)."""
    value = (text or "").strip()
    if "@" in value:
        value = value.lower()
        if len(value) > MAX_EMAIL or not _EMAIL.match(value):
            raise AccountInputError("bad_login", "That is not an email address.")
        return value
    digits = _PHONE_CHARS.sub("", value)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    elif digits.startswith("0"):
        digits = phone_country + digits[1:]
    if not digits.isdigit() or not 8 <= len(digits) <= 15:
        raise AccountInputError("bad_login", "Give an email address or a phone number.")
    return "+" + digits


def check_password(password: str, login: str) -> None:
    """Raise ``AccountInputError`` unless ``password`` is acceptable for ``login``."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountInputError("weak_password", f"Use at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise AccountInputError("weak_password", f"Use at most {MAX_PASSWORD} characters.")
    low = password.lower()
    if low in COMMON_PASSWORDS or len(set(low)) < 4:
        raise AccountInputError("weak_password", "That password is too common or too repetitive.")
    local = login.split("@")[0].lstrip("+").lower()
    if len(local) >= 4 and local in low:
        raise AccountInputError("weak_password", "Do not build the password from your email or phone number.")


@dataclass
class Hasher:
    """argon2id with the configured cost; ``verify`` never raises on a bad hash, it says no."""

    cost: Argon2Cost

    def __post_init__(self) -> None:
        self._ph = PasswordHasher(time_cost=self.cost.time_cost, memory_cost=self.cost.memory_kib,
                                  parallelism=self.cost.parallelism, type=Type.ID)
        self._dummy = self._ph.hash("metanoia-dummy-password")

    def hash(self, password: str) -> str:
        return self._ph.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """True if ``password`` matches; an unknown login (``stored`` None) costs the same time."""
        try:
            return bool(self._ph.verify(stored or self._dummy, password)) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._ph.check_needs_rehash(stored)
