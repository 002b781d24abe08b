"""dlib's binary serialisation format (dlib/serialize.h, dlib/dnn/tensor.h), read and written in pure Python."""

from __future__ import annotations

import math

import numpy as np

# float_details (dlib/float_details.h): special exponents marking non-finite values.
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002


class DlibFormatError(ValueError):
    """The bytes do not follow dlib's serialisation format (or not the layout we expect)."""


class DlibReader:
    """Sequential reader over a dlib-serialised byte string.

    Integers are a control byte (low 4 bits: byte count, 0x80: negative) followed by that many
    little-endian magnitude bytes; strings are an unsigned length then raw bytes; floats are an
    int64 mantissa and int16 exponent (value = mantissa * 2**exponent); bools are '0'/'1'.
    """

    def __init__(self, data: bytes, *, name: str = "<bytes>") -> None:
        self.raw = bytes(data)
        self.data = memoryview(self.raw)
        self.pos = 0
        self.name = name

    def _fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} at byte {self.pos}")

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self._fail(f"truncated: wanted {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    @property
    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def peek_byte(self) -> int:
        if self.at_end:
            raise self._fail("truncated")
        return self.data[self.pos]

    def int(self) -> int:
        ctrl = self._take(1)[0] & 0x8F  # dlib masks out 3 reserved bits
        negative, size = bool(ctrl & 0x80), ctrl & 0x0F
        if size == 0 or size > 8:
            raise self._fail(f"bad integer control byte {ctrl:#04x}")
        value = int.from_bytes(self._take(size), "little")
        return -value if negative else value

    def uint(self) -> int:
        value = self.int()
        if value < 0:
            raise self._fail("negative value where an unsigned integer was expected")
        return value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def floats(self, n: int) -> np.ndarray:
        """``n`` consecutive floats, decoded in one tight loop (shape predictors hold millions).
        Returns (n,) float32."""
        raw, pos, end = self.raw, self.pos, len(self.raw)
        out = np.empty(n, np.float64)
        from_bytes, ldexp = int.from_bytes, math.ldexp
        try:
            for i in range(n):
                c = raw[pos]
                size = c & 0x0F
                if not 0 < size <= 8 or pos + 1 + size > end:
                    raise IndexError
                mantissa = from_bytes(raw[pos + 1:pos + 1 + size], "little")
                if c & 0x80:
                    mantissa = -mantissa
                pos += 1 + size
                c = raw[pos]
                size = c & 0x0F
                if not 0 < size <= 8 or pos + 1 + size > end:
                    raise IndexError
                exponent = from_bytes(raw[pos + 1:pos + 1 + size], "little")
                if c & 0x80:
                    exponent = -exponent
                pos += 1 + size
                if exponent >= _EXP_INF:
                    out[i] = (math.inf if exponent == _EXP_INF else
                              -math.inf if exponent == _EXP_NINF else math.nan)
                else:
                    out[i] = ldexp(mantissa, exponent)
        except IndexError:
            self.pos = pos
            raise self._fail("truncated or malformed float") from None
        self.pos = pos
        return out.astype(np.float32)

    def bool(self) -> bool:
        ch = self._take(1)[0]
        if ch not in (0x30, 0x31):
            self.pos -= 1
            raise self._fail(f"bad bool byte {ch:#04x}")
        return ch == 0x31

    def string(self) -> str:
        n = self.uint()
        try:
            return bytes(self._take(n)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._fail("string is not UTF-8") from e

    def peek_string(self) -> str | None:
        """The string at the current position, if one is plausibly there; the position is kept."""
        pos = self.pos
        try:
            s = self.string()
        except DlibFormatError:
            return None
        finally:
            self.pos = pos
        return s if s.isprintable() else None

    def version(self, expected: set[int], what: str) -> int:
        v = self.int()
        if v not in expected:
            self.pos -= 2
            raise self._fail(f"unexpected {what} version {v} (expected one of {sorted(expected)})")
        return v

    def tensor(self) -> np.ndarray:
        """A resizable_tensor: version, (n, k, nr, nc), then float32 data. Returns (n, k, nr, nc)."""
        version = self.version({1, 2}, "tensor")
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise self._fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        if version == 2:  # raw little-endian IEEE float32
            arr = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        else:  # version 1: one float_details per value
            arr = self.floats(count)
        return arr.reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.version({1}, "alias_tensor")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]

    def float_matrix(self) -> np.ndarray:
        """A dlib::matrix of floats: rows and columns (stored negated by newer dlib), then values."""
        nr, nc = self.int(), self.int()
        nr, nc = abs(nr), abs(nc)
        return self.floats(nr * nc).reshape(nr, nc)


class DlibWriter:
    """The inverse of ``DlibReader``: builds dlib-serialised bytes (for tests and fixtures)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

    def int(self, value: int) -> None:
        value = int(value)
        neg = value < 0
        mag = -value if neg else value
        body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
        if len(body) > 8:
            raise ValueError(f"integer {value} does not fit in 8 bytes")
        self.parts.append(bytes([len(body) | (0x80 if neg else 0)]) + body)

    uint = int

    def float(self, value: float) -> None:
        if math.isnan(value):
            self.int(0)
            self.int(_EXP_NAN)
            return
        if math.isinf(value):
            self.int(0)
            self.int(_EXP_INF if value > 0 else _EXP_NINF)
            return
        # Same canonical form as float_details: 53-bit mantissa, trailing zero bytes shifted off.
        frac, exp = math.frexp(value)
        mantissa, exponent = int(frac * (1 << 53)), exp - 53
        for _ in range(8):
            if mantissa & 0xFF:
                break
            mantissa >>= 8
            exponent += 8
        if mantissa == 0:
            exponent = 0
        self.int(mantissa)
        self.int(exponent)

    def bool(self, value: bool) -> None:
        self.parts.append(b"1" if value else b"0")

    def string(self, value: str) -> None:
        raw = value.encode("utf-8")
        self.int(len(raw))
        self.parts.append(raw)

    def tensor(self, arr: np.ndarray | None, *, version: int = 2) -> None:
        arr = np.zeros((0, 0, 0, 0), np.float32) if arr is None else np.asarray(arr, np.float32)
        shape = tuple(arr.shape) + (1,) * (4 - arr.ndim)
        self.int(version)
        for d in shape:
            self.int(d)
        if version == 2:
            self.parts.append(arr.astype("<f4").tobytes())
        else:
            for v in arr.ravel():
                self.float(float(v))

    def alias_tensor(self, shape: tuple[int, int, int, int]) -> None:
        self.int(1)
        for d in shape:
            self.int(d)

    def float_matrix(self, arr: np.ndarray) -> None:
        """A dlib::matrix of floats, with the negated dimensions newer dlib writes."""
        arr = np.atleast_2d(np.asarray(arr, np.float64))
        self.int(-arr.shape[0])
        self.int(-arr.shape[1])
        for v in arr.ravel():
            self.float(float(v))
