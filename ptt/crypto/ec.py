"""Short Weierstrass curves y^2 = x^3 - 3x + b over a prime field, on gmpy2.

Both curves MIKEY-SAKKE needs have a = -3: NIST P-256 (ECCSI, RFC 6507) and the SAKKE parameter set 1
curve y^2 = x^3 - 3x (RFC 6508). Arithmetic is in Jacobian coordinates (x = X/Z^2, y = Y/Z^3) so a scalar
multiplication needs one field inversion; fixed bases (generators, the domain's public keys) use
precomputed signed-window tables that need no doublings at all; variable bases use a width-w NAF.

Affine points are ``(x, y)`` tuples of ``mpz``; the point at infinity is ``None``.
This code is not constant-time (CPython and GMP are not); see ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import gmpy2
from gmpy2 import mpz

Affine = tuple[mpz, mpz] | None
Jacobian = tuple[mpz, mpz, mpz]  # Z == 0 is the point at infinity

_ZERO = mpz(0)
_ONE = mpz(1)
_INFINITY_J: Jacobian = (_ONE, _ONE, _ZERO)


def batch_invert(values: Sequence[mpz], p: mpz) -> list[mpz]:
    """Invert many non-zero field elements with one inversion (Montgomery's trick)."""
    n = len(values)
    if n == 0:
        return []
    prefix = [_ONE] * n
    acc = _ONE
    for i, v in enumerate(values):
        prefix[i] = acc
        acc = acc * v % p
    inv = gmpy2.invert(acc, p)
    out = [_ZERO] * n
    for i in range(n - 1, -1, -1):
        out[i] = inv * prefix[i] % p
        inv = inv * values[i] % p
    return out


@dataclass(frozen=True, eq=False)
class Curve:
    """A curve y^2 = x^3 - 3x + b over F_p with a prime-order subgroup of order ``q``."""

    name: str
    p: mpz
    b: mpz
    q: mpz
    cofactor: int
    gx: mpz
    gy: mpz
    field_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "field_bytes", (int(self.p).bit_length() + 7) // 8)

    @property
    def generator(self) -> tuple[mpz, mpz]:
        return (self.gx, self.gy)

    @property
    def point_bytes(self) -> int:
        return 1 + 2 * self.field_bytes

    # -- encoding -----------------------------------------------------------------------------------------

    def encode(self, point: Affine) -> bytes:
        """Uncompressed encoding 04 || x || y."""
        if point is None:
            raise ValueError("the point at infinity has no uncompressed encoding")
        n = self.field_bytes
        return b"\x04" + int(point[0]).to_bytes(n, "big") + int(point[1]).to_bytes(n, "big")

    def decode(self, data: bytes) -> tuple[mpz, mpz]:
        """Decode 04 || x || y and check the point lies on the curve (raises ValueError)."""
        n = self.field_bytes
        if len(data) != 1 + 2 * n:
            raise ValueError(f"{self.name}: point must be {1 + 2 * n} octets, got {len(data)}")
        if data[0] != 4:
            raise ValueError(f"{self.name}: point must be uncompressed (04), got {data[0]:02x}")
        x = mpz(int.from_bytes(data[1 : 1 + n], "big"))
        y = mpz(int.from_bytes(data[1 + n :], "big"))
        point = (x, y)
        if not self.on_curve(point):
            raise ValueError(f"{self.name}: point is not on the curve")
        return point

    def on_curve(self, point: Affine) -> bool:
        if point is None:
            return False
        x, y = point
        p = self.p
        if not (0 <= x < p and 0 <= y < p):
            return False
        return bool((y * y - (x * x * x - 3 * x + self.b)) % p == 0)

    def in_subgroup(self, point: Affine) -> bool:
        """On the curve and of order q (a cheap check when the cofactor is 1)."""
        if not self.on_curve(point):
            return False
        if self.cofactor == 1:
            return True
        return self.mul(point, self.q) is None

    # -- Jacobian arithmetic ------------------------------------------------------------------------------

    def _double(self, P: Jacobian) -> Jacobian:
        # dbl-2001-b, a = -3
        X1, Y1, Z1 = P
        if Z1 == 0 or Y1 == 0:
            return _INFINITY_J
        p = self.p
        delta = Z1 * Z1 % p
        gamma = Y1 * Y1 % p
        beta = X1 * gamma % p
        alpha = 3 * (X1 - delta) * (X1 + delta) % p
        X3 = (alpha * alpha - 8 * beta) % p
        Z3 = ((Y1 + Z1) ** 2 - gamma - delta) % p
        Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
        return (X3, Y3, Z3)

    def _add_affine(self, P: Jacobian, x2: mpz, y2: mpz) -> Jacobian:
        # madd-2007-bl: Jacobian + affine
        X1, Y1, Z1 = P
        if Z1 == 0:
            return (x2, y2, _ONE)
        p = self.p
        Z1Z1 = Z1 * Z1 % p
        H = (x2 * Z1Z1 - X1) % p
        R = (y2 * Z1 * Z1Z1 - Y1) % p
        if H == 0:
            if R == 0:
                return self._double(P)
            return _INFINITY_J
        HH = H * H % p
        I4 = 4 * HH
        J = H * I4 % p
        R2 = 2 * R
        V = X1 * I4 % p
        X3 = (R2 * R2 - J - 2 * V) % p
        Y3 = (R2 * (V - X3) - 2 * Y1 * J) % p
        Z3 = ((Z1 + H) ** 2 - Z1Z1 - HH) % p
        return (X3, Y3, Z3)

    def _add(self, P: Jacobian, Q: Jacobian) -> Jacobian:
        # add-2007-bl: Jacobian + Jacobian
        X1, Y1, Z1 = P
        X2, Y2, Z2 = Q
        if Z1 == 0:
            return Q
        if Z2 == 0:
            return P
        p = self.p
        Z1Z1 = Z1 * Z1 % p
        Z2Z2 = Z2 * Z2 % p
        U1 = X1 * Z2Z2 % p
        U2 = X2 * Z1Z1 % p
        S1 = Y1 * Z2 * Z2Z2 % p
        S2 = Y2 * Z1 * Z1Z1 % p
        H = (U2 - U1) % p
        R = (S2 - S1) % p
        if H == 0:
            if R == 0:
                return self._double(P)
            return _INFINITY_J
        I4 = 4 * H * H % p
        J = H * I4 % p
        R2 = 2 * R
        V = U1 * I4 % p
        X3 = (R2 * R2 - J - 2 * V) % p
        Y3 = (R2 * (V - X3) - 2 * S1 * J) % p
        Z3 = ((Z1 + Z2) ** 2 - Z1Z1 - Z2Z2) * H % p
        return (X3, Y3, Z3)

    def to_affine(self, P: Jacobian) -> Affine:
        X, Y, Z = P
        if Z == 0:
            return None
        p = self.p
        zi = gmpy2.invert(Z, p)
        zi2 = zi * zi % p
        return (X * zi2 % p, Y * zi2 * zi % p)

    def _normalize_many(self, points: Sequence[Jacobian]) -> list[tuple[mpz, mpz]]:
        """Jacobian -> affine for many finite points with one inversion."""
        p = self.p
        inverses = batch_invert([P[2] for P in points], p)
        out = []
        for (X, Y, _), zi in zip(points, inverses, strict=True):
            zi2 = zi * zi % p
            out.append((X * zi2 % p, Y * zi2 * zi % p))
        return out

    # -- public point operations -----------------------------------------------------------------------

    def add(self, P: Affine, Q: Affine) -> Affine:
        if P is None:
            return Q
        if Q is None:
            return P
        return self.to_affine(self._add_affine((P[0], P[1], _ONE), Q[0], Q[1]))

    def negate(self, P: Affine) -> Affine:
        if P is None:
            return None
        return (P[0], (-P[1]) % self.p)

    def mul(self, P: Affine, k: int | mpz) -> Affine:
        """[k]P for a variable base P (width-5 NAF)."""
        return self.to_affine(self._mul_jacobian(P, k))

    def _mul_jacobian(self, P: Affine, k: int | mpz, width: int = 5) -> Jacobian:
        if P is None:
            return _INFINITY_J
        k = mpz(k)
        if k < 0:
            k = -k
            P = self.negate(P)
            assert P is not None
        if k == 0:
            return _INFINITY_J
        # odd multiples P, 3P, ..., (2^(w-1) - 1)P, made affine for cheap mixed additions
        base: Jacobian = (P[0], P[1], _ONE)
        twice = self._double(base)
        odd = [base]
        for _ in range((1 << (width - 2)) - 1):
            odd.append(self._add(odd[-1], twice))
        finite = [q for q in odd if q[2] != 0]
        if len(finite) != len(odd):  # tiny-order point: fall back to plain double-and-add
            return self._double_and_add(P, k)
        table = self._normalize_many(odd)
        p = self.p
        digits = wnaf(k, width)
        acc = _INFINITY_J
        double = self._double
        add_affine = self._add_affine
        for d in reversed(digits):
            acc = double(acc)
            if d > 0:
                x, y = table[d >> 1]
                acc = add_affine(acc, x, y)
            elif d < 0:
                x, y = table[(-d) >> 1]
                acc = add_affine(acc, x, p - y)
        return acc

    def _double_and_add(self, P: tuple[mpz, mpz], k: mpz) -> Jacobian:
        acc = _INFINITY_J
        for bit in bin(k)[2:]:
            acc = self._double(acc)
            if bit == "1":
                acc = self._add_affine(acc, P[0], P[1])
        return acc


def wnaf(k: mpz, width: int) -> list[int]:
    """Width-w non-adjacent form of k >= 0, least significant digit first."""
    digits: list[int] = []
    full = 1 << width
    half = full >> 1
    while k > 0:
        if k & 1:
            d = int(k & (full - 1))
            if d >= half:
                d -= full
            k -= d
        else:
            d = 0
        digits.append(d)
        k >>= 1
    return digits


def signed_window_digits(k: mpz, width: int, windows: int) -> list[int]:
    """k as sum of d_i * 2^(width*i), d_i in [-2^(width-1), 2^(width-1)], least significant first; the digits
    index fixed-base tables that hold only the positive multiples (a negative digit uses the negation)."""
    full = 1 << width
    half = full >> 1
    mask = full - 1
    digits = []
    while k > 0:
        d = int(k & mask)
        k >>= width
        if d > half:
            d -= full
            k += 1
        digits.append(d)
    if len(digits) > windows:
        raise AssertionError("fixed-base table too small for the scalar")
    return digits


class FixedBase:
    """[k]B for a fixed point B with a signed-window table: one mixed addition per window, no doublings.

    Table row i holds [d * 2^(w*i)]B for d = 1 .. 2^(w-1); negative digits use the negated point.
    """

    def __init__(self, curve: Curve, point: tuple[mpz, mpz], width: int = 8, bits: int | None = None) -> None:
        if not curve.on_curve(point):
            raise ValueError(f"{curve.name}: fixed base is not on the curve")
        self.curve = curve
        self.point = point
        self.width = width
        nbits = bits if bits is not None else int(curve.q).bit_length()
        self.windows = nbits // width + 2  # + carry out of the top window, + headroom for k < 2q
        half = 1 << (width - 1)
        rows: list[list[tuple[mpz, mpz]]] = []
        row_base: Jacobian = (point[0], point[1], _ONE)
        for _ in range(self.windows):
            multiples = [row_base]
            for _ in range(half - 1):
                multiples.append(curve._add(multiples[-1], row_base))
            if any(m[2] == 0 for m in multiples):
                raise ValueError(f"{curve.name}: fixed base has small order")
            rows.append(curve._normalize_many(multiples))
            # next row base: 2^w * row_base = 2 * (2^(w-1) * row_base)
            row_base = curve._double(multiples[-1])
        self.rows = rows

    def mul_jacobian(self, k: int | mpz) -> Jacobian:
        curve = self.curve
        p = curve.p
        acc = _INFINITY_J
        add_affine = curve._add_affine
        for row, d in zip(self.rows, signed_window_digits(mpz(k) % curve.q, self.width, self.windows), strict=False):
            if d > 0:
                x, y = row[d - 1]
                acc = add_affine(acc, x, y)
            elif d < 0:
                x, y = row[-d - 1]
                acc = add_affine(acc, x, p - y)
        return acc

    def mul(self, k: int | mpz) -> Affine:
        return self.curve.to_affine(self.mul_jacobian(k))
