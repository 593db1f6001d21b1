"""The Tate-Lichtenbaum pairing of RFC 6508 §3.2 on SAKKE parameter set 1, and fast powers of g.

Elements of PF_p = F_p[i]* / F_p* (i^2 = -1) are handled as pairs (real, imag); any F_p multiple is the
same element, and the RFC represents x1 + i*x2 by the integer x2/x1 mod p.

<R, Q> = f_{q,R}(psi(Q))^((p+1)/q) with psi(x, y) = (-x, i*y); here (p+1)/q = 4.

Speed-ups, each checked by the RFC vectors and by tests of bilinearity:
* the pairing is symmetric on the order-q group, so the Miller loop runs on the *fixed* argument (a user's
  RSK, or [b]P + Z), whose line coefficients are precomputed once in affine form; a pairing then costs
  one squaring and one sparse multiplication in F_p[i] per step;
* lines are scaled by 1/y (an F_p factor, invisible in PF_p), so every line has the form u + i;
* vertical lines and the final addition are F_p values and are skipped;
* g^r uses a signed fixed-base window table of normalised elements 1 + t*i.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import suppress
from functools import lru_cache

import gmpy2
from gmpy2 import mpz

from ptt.crypto.ec import batch_invert, signed_window_digits, wnaf
from ptt.crypto.params import SAKKE_CURVE, SAKKE_G, SAKKE_P, SAKKE_Q

_P = SAKKE_P
_Q_NAF = wnaf(SAKKE_Q, 2)  # non-adjacent form of q, least significant first


class MillerLines:
    """Precomputed Miller-loop lines for a fixed point Q of order q: [(lambda, d)], line value at R is
    lambda*x_R + d + i*y_R (up to an F_p factor)."""

    __slots__ = ("_schedule", "lines", "point")

    def __init__(self, point: tuple[mpz, mpz]) -> None:
        p = _P
        qx, qy = point
        self.point = point
        lines: list[tuple[mpz, mpz]] = []
        cx, cy = qx, qy
        digits = _Q_NAF[:-1]  # the leading 1 is the start value C = Q
        last = len(digits) - 1
        for pos in range(last, -1, -1):
            # tangent at C
            if cy == 0:
                raise ValueError("pairing argument has small order")
            lam = (3 * cx * cx - 3) * gmpy2.invert(2 * cy, p) % p
            lines.append((lam, (lam * cx - cy) % p))
            nx = (lam * lam - 2 * cx) % p
            cy = (lam * (cx - nx) - cy) % p
            cx = nx
            d = digits[pos]
            if d:
                ay = qy if d > 0 else p - qy
                if cx == qx:
                    # C = -(+-Q): the vertical line (an F_p value) and C becomes O; only legal at the very end
                    if pos != 0:
                        raise ValueError("pairing argument is not of order q")
                    lines.append((mpz(-1), mpz(-1)))
                    break
                lam = (ay - cy) * gmpy2.invert(qx - cx, p) % p
                lines.append((lam, (lam * cx - cy) % p))
                nx = (lam * lam - cx - qx) % p
                cy = (lam * (cx - nx) - cy) % p
                cx = nx
        self.lines = lines
        self._schedule = _schedule()

    def evaluate(self, x: mpz, y: mpz) -> tuple[mpz, mpz]:
        """Miller value at psi((x, y)) raised to (p+1)/q = 4, as (real, imag)."""
        p = _P
        if y == 0:
            raise ValueError("pairing argument has small order")
        yinv = gmpy2.invert(y, p)
        xs = x * yinv % p
        fa = mpz(1)
        fb = mpz(0)
        lines = self.lines
        idx = 0
        for has_add in self._schedule:
            # f = f^2 * (u + i), u = (lambda*x + d)/y
            lam, d = lines[idx]
            idx += 1
            u = (lam * xs + d * yinv) % p
            A = (fa + fb) * (fa - fb) % p
            B = 2 * fa * fb % p
            fa = (A * u - B) % p
            fb = (A + B * u) % p
            if has_add:
                lam, d = lines[idx]
                idx += 1
                if lam < 0:  # skipped vertical line
                    continue
                u = (lam * xs + d * yinv) % p
                fa, fb = (fa * u - fb) % p, (fa + fb * u) % p
        # final exponentiation in PF_p: ^4
        for _ in range(2):
            fa, fb = (fa + fb) * (fa - fb) % p, 2 * fa * fb % p
        return fa, fb


@lru_cache(maxsize=1)
def _schedule() -> tuple[bool, ...]:
    digits = _Q_NAF[:-1]
    return tuple(digits[pos] != 0 for pos in range(len(digits) - 1, -1, -1))


def to_representative(value: tuple[mpz, mpz]) -> mpz:
    """The RFC 6508 integer for an element of PF_p: imag/real mod p."""
    fa, fb = value
    if fa == 0:
        raise ValueError("element of PF_p has no finite representative")
    return fb * gmpy2.invert(fa, _P) % _P


LINE_CACHE_SIZE = 8
"""Line tables kept (least recently used dropped first). One table is ~1 MB (q has 1022 bits: 1373 lines of two
1024-bit integers): a client needs its own RSK of the current and next key period (a few identities at most); a
group server validates every group identity's RSK when it is provisioned but never decrypts with it, so an
unbounded (or large) cache grew by ~1 MB per group."""


class LineCache:
    """A bounded LRU of ``MillerLines`` keyed by the encoded point, shared between threads (a key set's lines are
    built off the reactor: ``client.rsklines``). No lock (the core does no threading): each step is one
    OrderedDict operation, atomic under the GIL, and a race costs at most a table built twice or dropped early."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._tables: OrderedDict[bytes, MillerLines] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(self, point_bytes: bytes) -> MillerLines:
        """The point's lines, built (and kept) if not held."""
        key = bytes(point_bytes)
        lines = self._tables.get(key)
        if lines is not None:
            with suppress(KeyError):  # evicted meanwhile by another thread: still a valid table
                self._tables.move_to_end(key)
            self.hits += 1
            return lines
        self.misses += 1
        lines = MillerLines(SAKKE_CURVE.decode(key))  # ~20-50 ms
        self._tables[key] = lines
        while len(self._tables) > self.size:
            try:
                self._tables.popitem(last=False)
            except KeyError:  # another thread emptied it first
                break
        return lines

    def holds(self, point_bytes: bytes) -> bool:
        return bytes(point_bytes) in self._tables

    def __len__(self) -> int:
        return len(self._tables)

    def cache_clear(self) -> None:
        self._tables.clear()
        self.hits = self.misses = 0


miller_lines = LineCache(LINE_CACHE_SIZE)
"""Cached line tables, keyed by the encoded point (an RSK is reused for its whole key period)."""


def pairing(r_point: tuple[mpz, mpz], q_point_bytes: bytes) -> mpz:
    """<R, Q> of RFC 6508 §3.2 as its representative, with Q given encoded (its lines are cached)."""
    return to_representative(miller_lines(q_point_bytes).evaluate(*r_point))


def reference_pairing(r_point: tuple[mpz, mpz], q_point: tuple[mpz, mpz]) -> mpz:
    """The RFC 6508 §3.2 algorithm as written (Miller loop on R, evaluated at psi(Q)); slow, for tests."""
    p = _P
    curve = SAKKE_CURVE
    qx, qy = q_point
    v = (mpz(1), mpz(0))

    def mul(a: tuple[mpz, mpz], b: tuple[mpz, mpz]) -> tuple[mpz, mpz]:
        return ((a[0] * b[0] - a[1] * b[1]) % p, (a[0] * b[1] + a[1] * b[0]) % p)

    c = r_point
    bits = bin(SAKKE_Q - 1)[3:]
    for bit in bits:
        cx, cy = c
        lam = (3 * cx * cx - 3) * gmpy2.invert(2 * cy, p) % p
        # line through C with slope lambda at (-qx, i*qy): (lambda*(qx + cx) - cy) + i*qy
        v = mul(mul(v, v), ((lam * (qx + cx) - cy) % p, qy))
        c2 = curve.add(c, c)
        assert c2 is not None
        c = c2
        if bit == "1":
            cx, cy = c
            rx, ry = r_point
            lam = (ry - cy) * gmpy2.invert(rx - cx, p) % p
            v = mul(v, ((lam * (qx + cx) - cy) % p, qy))
            c3 = curve.add(c, r_point)
            assert c3 is not None
            c = c3
    for _ in range(2):
        v = mul(v, v)
    return to_representative(v)


class PowerTable:
    """x^k for a fixed x in PF_p (given by its representative t: the element 1 + t*i), signed windows."""

    def __init__(self, representative: mpz, width: int = 8, bits: int | None = None) -> None:
        p = _P
        nbits = bits if bits is not None else int(SAKKE_Q).bit_length()
        self.width = width
        self.windows = nbits // width + 2
        half = 1 << (width - 1)
        rows: list[list[mpz]] = []
        base = (mpz(1), mpz(representative) % p)
        for _ in range(self.windows):
            elements = [base]
            for _ in range(half - 1):
                a, b = elements[-1]
                c, d = base
                elements.append(((a * c - b * d) % p, (a * d + b * c) % p))
            inverses = batch_invert([e[0] for e in elements], p)
            rows.append([e[1] * inv % p for e, inv in zip(elements, inverses, strict=True)])
            a, b = elements[-1]
            base = ((a + b) * (a - b) % p, 2 * a * b % p)  # (x^(2^(w-1)))^2
        self.rows = rows

    def power(self, k: int | mpz) -> tuple[mpz, mpz]:
        p = _P
        fa = mpz(1)
        fb = mpz(0)
        for row, d in zip(self.rows, signed_window_digits(mpz(k) % SAKKE_Q, self.width, self.windows), strict=False):
            if d > 0:
                t = row[d - 1]
                fa, fb = (fa - fb * t) % p, (fb + fa * t) % p
            elif d < 0:  # (1 + t*i)^-1 = 1 - t*i in PF_p
                t = row[-d - 1]
                fa, fb = (fa + fb * t) % p, (fb - fa * t) % p
        return fa, fb


@lru_cache(maxsize=1)
def g_power_table() -> PowerTable:
    return PowerTable(SAKKE_G)
