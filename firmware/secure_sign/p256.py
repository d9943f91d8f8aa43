"""NIST P-256 (secp256r1) ECDSA with SHA-256 in plain MicroPython.

Used by the software signer (dev boards, simulation) and by the ATECC608
emulator when it runs on MicroPython. References: FIPS 186-4 (the curve and
ECDSA), SEC 1 v2 section 4.1, RFC 6979 (deterministic nonces, section 3.2),
RFC 2104 (HMAC), "Explicit-Formulas Database" for the Jacobian formulas.

Efficiency on MicroPython (where every big-integer result is a heap object):

- Jacobian coordinates, so only one field inversion per scalar multiplication
  (done with Fermat, ``pow(z, p - 2, p)``: MicroPython's 3-argument ``pow``
  does not accept a negative exponent).
- Doubling with the a = -3 shortcut (dbl-2001-b, 3M + 5S) and mixed
  Jacobian+affine addition (madd, 8M + 3S).
- Fixed-base comb for k*G (Lim-Lee, ``_COMB_W`` teeth): about 256/W doublings and
  256/W additions per signature instead of 256 + 128. The 2**W - 1 affine table
  points are computed once, on first use (``precompute()``), about 7 KB of ints.
- Scalar bits are read from a 32-byte string, not by shifting big integers.

Not constant time: this signer is for development boards and simulation,
readings it signs carry the software-key flag. Production keys live in the
ATECC608. Signatures are not low-S normalised (neither is the ATECC608's).
"""

import hashlib

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

_COMB_W = 6                           # comb teeth (table of 2**W - 1 points)
_COMB_D = (256 + _COMB_W - 1) // _COMB_W  # columns
_TX = None                            # comb table, affine x (index 1 .. 2**W - 1)
_TY = None


def _inv(a, m):
    """Modular inverse by Fermat's little theorem (m prime)."""
    return pow(a, m - 2, m)


def _double(X, Y, Z):
    """Jacobian doubling for a = -3 (EFD dbl-2001-b). Z == 0 is infinity."""
    if Z == 0 or Y == 0:
        return 0, 1, 0
    p = P
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = 2 * Y * Z % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _add_mixed(X, Y, Z, x2, y2):
    """Jacobian + affine addition (EFD madd-2004-hmv), handling the special cases."""
    if Z == 0:
        return x2, y2, 1
    p = P
    t1 = Z * Z % p
    t2 = t1 * Z % p
    h = (t1 * x2 - X) % p
    r = (t2 * y2 - Y) % p
    if h == 0:
        if r == 0:
            return _double(X, Y, Z)
        return 0, 1, 0
    Z3 = Z * h % p
    hh = h * h % p
    hhh = hh * h % p
    v = hh * X % p
    X3 = (r * r - hhh - 2 * v) % p
    Y3 = (r * (v - X3) - hhh * Y) % p
    return X3, Y3, Z3


def _add(X1, Y1, Z1, X2, Y2, Z2):
    """Jacobian + Jacobian addition (EFD add-1998-cmo-2). Off the hot path."""
    if Z1 == 0:
        return X2, Y2, Z2
    if Z2 == 0:
        return X1, Y1, Z1
    p = P
    z1z1 = Z1 * Z1 % p
    z2z2 = Z2 * Z2 % p
    u1 = X1 * z2z2 % p
    s1 = Y1 * Z2 * z2z2 % p
    h = (X2 * z1z1 - u1) % p
    r = (Y2 * Z1 * z1z1 - s1) % p
    if h == 0:
        if r == 0:
            return _double(X1, Y1, Z1)
        return 0, 1, 0
    hh = h * h % p
    hhh = h * hh % p
    v = u1 * hh % p
    X3 = (r * r - hhh - 2 * v) % p
    Y3 = (r * (v - X3) - s1 * hhh) % p
    Z3 = Z1 * Z2 * h % p
    return X3, Y3, Z3


def _affine(X, Y, Z):
    if Z == 0:
        raise ValueError("point at infinity")
    zi = _inv(Z, P)
    zi2 = zi * zi % P
    return X * zi2 % P, Y * zi2 * zi % P


def precompute():
    """Build the comb table for G (once; later calls return it at once) -> (tx, ty)."""
    global _TX, _TY
    if _TX is not None and _TY is not None:
        return _TX, _TY
    w, d = _COMB_W, _COMB_D
    bases = []
    X, Y, Z = GX, GY, 1
    for i in range(w):
        if i:
            for _ in range(d):
                X, Y, Z = _double(X, Y, Z)
            X, Y = _affine(X, Y, Z)
            Z = 1
        bases.append((X, Y))
    size = 1 << w
    jx = [0] * size
    jy = [0] * size
    jz = [0] * size
    for idx in range(1, size):
        top = 0
        while (2 << top) <= idx:
            top += 1
        rest = idx ^ (1 << top)
        bx, by = bases[top]
        if rest:
            jx[idx], jy[idx], jz[idx] = _add_mixed(jx[rest], jy[rest], jz[rest], bx, by)
        else:
            jx[idx], jy[idx], jz[idx] = bx, by, 1
    tx = [0] * size
    ty = [0] * size
    for idx in range(1, size):
        tx[idx], ty[idx] = _affine(jx[idx], jy[idx], jz[idx])
    _TX, _TY = tx, ty
    return tx, ty


def _mul_g(k):
    """k*G in Jacobian coordinates, by the fixed-base comb (k in [1, N))."""
    tx, ty, p = _TX, _TY, P
    if tx is None or ty is None:
        tx, ty = precompute()
    kb = k.to_bytes(32, "big")
    w, d = _COMB_W, _COMB_D
    X = Y = Z = 0
    for col in range(d - 1, -1, -1):
        if Z:
            # dbl-2001-b, inlined (a = -3)
            delta = Z * Z % p
            gamma = Y * Y % p
            beta = X * gamma % p
            alpha = 3 * (X - delta) * (X + delta) % p
            Z = 2 * Y * Z % p
            X = (alpha * alpha - 8 * beta) % p
            Y = (alpha * (4 * beta - X) - 8 * gamma * gamma) % p
        idx = 0
        j = col
        for i in range(w):
            if j < 256 and (kb[31 - (j >> 3)] >> (j & 7)) & 1:
                idx |= 1 << i
            j += d
        if idx:
            X, Y, Z = _add_mixed(X, Y, Z, tx[idx], ty[idx])
    return X, Y, Z


def _mul(k, x, y):
    """k*(x, y) for an arbitrary point (4-bit window). Used by verify only."""
    tab = [(0, 1, 0), (x, y, 1)]
    for i in range(2, 16):
        a = tab[i - 1]
        tab.append(_add_mixed(a[0], a[1], a[2], x, y))
    X, Y, Z = 0, 1, 0
    kb = k.to_bytes(32, "big")
    for byte in kb:
        for nib in (byte >> 4, byte & 15):
            for _ in range(4):
                X, Y, Z = _double(X, Y, Z)
            if nib:
                t = tab[nib]
                X, Y, Z = _add(X, Y, Z, t[0], t[1], t[2])
    return X, Y, Z


def on_curve(x, y):
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x - 3 * x + B)) % P == 0


def public_key(d):
    """Public point of the private scalar d as 64 bytes X||Y."""
    if not 0 < d < N:
        raise ValueError("private key out of range")
    x, y = _affine(*_mul_g(d))
    return x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _hmac(key, a, b=b"", c=b"", e=b""):
    """HMAC-SHA256 (RFC 2104) over a || b || c || e, key of at most 64 bytes."""
    pad = bytearray(64)
    pad[: len(key)] = key
    for i in range(64):
        pad[i] ^= 0x36
    h = hashlib.sha256(pad)
    h.update(a)
    h.update(b)
    h.update(c)
    h.update(e)
    inner = h.digest()
    for i in range(64):
        pad[i] ^= 0x36 ^ 0x5C
    h = hashlib.sha256(pad)
    h.update(inner)
    return h.digest()


def rfc6979_nonces(d, digest):
    """Candidate nonces k for private key d and a 32-byte digest (RFC 6979 3.2).

    qlen = hlen = 256, so bits2int is a plain big-endian conversion and
    bits2octets(h1) is (h1 mod q) as 32 bytes.
    """
    x = d.to_bytes(32, "big")
    h1 = (int.from_bytes(digest, "big") % N).to_bytes(32, "big")
    v = b"\x01" * 32
    k = b"\x00" * 32
    k = _hmac(k, v, b"\x00", x, h1)
    v = _hmac(k, v)
    k = _hmac(k, v, b"\x01", x, h1)
    v = _hmac(k, v)
    while True:
        v = _hmac(k, v)
        cand = int.from_bytes(v, "big")
        if 0 < cand < N:
            yield cand
        k = _hmac(k, v, b"\x00")
        v = _hmac(k, v)


def sign(d, digest):
    """ECDSA signature (r, s) of a 32-byte digest with private scalar d, RFC 6979 k."""
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes")
    if not 0 < d < N:
        raise ValueError("private key out of range")
    e = int.from_bytes(digest, "big")
    for k in rfc6979_nonces(d, digest):
        X, Y, Z = _mul_g(k)
        zi = _inv(Z, P)
        r = X * zi * zi % P % N
        if r == 0:
            continue
        s = _inv(k, N) * (e + r * d) % N
        if s:
            return r, s


def verify(pub, digest, r, s):
    """True if (r, s) is a valid signature of digest under pub (64 bytes X||Y)."""
    if len(pub) != 64 or len(digest) != 32:
        return False
    if not (0 < r < N and 0 < s < N):
        return False
    qx = int.from_bytes(pub[:32], "big")
    qy = int.from_bytes(pub[32:], "big")
    if not on_curve(qx, qy):
        return False
    e = int.from_bytes(digest, "big")
    w = _inv(s, N)
    u1 = e * w % N
    u2 = r * w % N
    X1, Y1, Z1 = _mul_g(u1) if u1 else (0, 1, 0)
    X2, Y2, Z2 = _mul(u2, qx, qy)
    X, Y, Z = _add(X1, Y1, Z1, X2, Y2, Z2)
    if Z == 0:
        return False
    x, _ = _affine(X, Y, Z)
    return x % N == r
