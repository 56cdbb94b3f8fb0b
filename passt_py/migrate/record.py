# SPDX-License-Identifier: MIT
"""Flow-state records on the migration wire: numeric field ids, checked types.

A protocol's migrated state is a dataclass (tcp.TcpState, udp.UdpFlowState,
icmp.PingFlowState) that declares its wire schema next to its fields, as a ``WIRE`` class
attribute: one :class:`WireField` per field, each with a number that never changes and never
gets reused. What goes on the wire is that number, never a Python name, so renaming an
attribute cannot change the stream (the schema then names the new attribute; the number and
the version-1 name stay). tests/test_migrate_schema.py pins a digest of every schema per
stream version: a schema change without a version bump fails there.

Record layout, every integer big-endian (version 2 on)::

    record  count u8 | field[count]
    field   id u8 | type u8 | value       (value as the type says: see ``T_*``)

Version 1 (passt-py 0.1.0) wrote each field's name instead of its id (u8 length + ASCII): the
reader maps those names through the schema's frozen version-1 names, and the writer can still
produce them, so that release can read what a newer source sends it.

The reader checks every value against the dataclass's annotations, refuses a field given
twice and a required field missing, and ignores ids (or version-1 names) it does not know, so
a newer writer may add optional fields.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import ipaddress
import struct
import typing
from dataclasses import dataclass
from typing import Any

T_NONE, T_FALSE, T_TRUE, T_INT, T_BYTES, T_TEXT, T_IP4, T_IP6, T_FLOAT = range(9)
MAX_FIELDS = 64
#: The first stream version whose records carry field ids (version 1: names).
IDS_SINCE = 2

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_F64 = struct.Struct("!d")


class RecordError(ValueError):
    """A record that does not decode (the reader wraps it with its stage)."""


@dataclass(frozen=True)
class WireField:
    """One field of a record: ``id`` on the wire (1-255, never reused), ``name`` in
    version-1 streams (frozen), ``attr`` the dataclass attribute when it differs from
    ``name`` (after a rename)."""

    id: int
    name: str
    attr: str | None = None

    @property
    def attribute(self) -> str:
        return self.attr or self.name


class Reader:
    """Bounds-checked cursor over one section payload (or one record)."""

    def __init__(self, data: bytes | bytearray | memoryview, stage: str) -> None:
        self.data = memoryview(data)
        self.off = 0
        self.stage = stage

    def fail(self, message: str) -> RecordError:
        """The error for malformed content at this point."""
        return RecordError(message)

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes; never past the payload (a lying length fails here)."""
        if n < 0 or n > len(self.data) - self.off:
            raise self.fail(f"truncated: need {n} bytes at offset {self.off}, "
                            f"{len(self.data) - self.off} left")
        view = self.data[self.off:self.off + n]
        self.off += n
        return view

    def unpack(self, st: struct.Struct) -> tuple:
        """The next fields laid out as ``st``."""
        return st.unpack(self.take(st.size))

    def u8(self) -> int:
        """One byte."""
        return self.take(1)[0]

    def u16(self) -> int:
        """A big-endian u16."""
        return _U16.unpack(self.take(2))[0]

    def u32(self) -> int:
        """A big-endian u32."""
        return _U32.unpack(self.take(4))[0]

    def addr(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """An address with its family tag (see pack_addr)."""
        version = self.u8()
        if version == 0:
            return None
        if version == 4:
            return ipaddress.IPv4Address(bytes(self.take(4)))
        if version == 6:
            return ipaddress.IPv6Address(bytes(self.take(16)))
        raise self.fail(f"bad address family tag {version}")

    def text(self) -> str:
        """A u16-length-prefixed UTF-8 string."""
        raw = bytes(self.take(self.u16()))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("text is not UTF-8") from None

    def end(self) -> None:
        """Check the payload was consumed exactly: trailing bytes are a format error."""
        if self.off != len(self.data):
            raise self.fail(f"{len(self.data) - self.off} unexpected bytes at the end")


def pack_addr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bytes:
    """Family tag (0 none, 4, 6) and the address bytes."""
    if addr is None:
        return b"\0"
    return bytes([addr.version]) + addr.packed


def pack_text(text: str) -> bytes:
    """u16 length and UTF-8 bytes (cut at 65535)."""
    raw = text.encode("utf-8")[:0xFFFF]
    return _U16.pack(len(raw)) + raw


# ---- schemas ----

@functools.lru_cache(maxsize=32)
def schema(cls: type) -> tuple[WireField, ...]:
    """``cls.WIRE``, checked once: ids unique and in range, names unique, and exactly the
    dataclass's fields (a field without a number would silently not migrate)."""
    wire: tuple[WireField, ...] = getattr(cls, "WIRE", ())
    ids = [f.id for f in wire]
    names = [f.name for f in wire]
    attrs = {f.attribute for f in wire}
    fields = {f.name for f in dataclasses.fields(cls)}
    if len(set(ids)) != len(ids) or any(not 1 <= i <= 255 for i in ids):
        raise TypeError(f"{cls.__name__}.WIRE: ids must be unique, 1-255")
    if len(set(names)) != len(names) or len(attrs) != len(wire):
        raise TypeError(f"{cls.__name__}.WIRE: names and attributes must be unique")
    if attrs != fields:
        raise TypeError(f"{cls.__name__}.WIRE does not match its fields: "
                        f"{sorted(attrs ^ fields)}")
    return wire


def schema_digest(cls: type) -> str:
    """A short digest of what a record of ``cls`` looks like on the wire: each field's id,
    version-1 name and annotated type (what the test pins per stream version)."""
    hints = typing.get_type_hints(cls)
    text = ";".join(f"{f.id}:{f.name}:{hints[f.attribute]}" for f in schema(cls))
    return hashlib.sha256(f"{cls.__name__}|{text}".encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=32)
def _encoding(cls: type, version: int) -> tuple[tuple[str, bytes], ...]:
    """Per field: the attribute and the bytes that name it on the wire in ``version``."""
    if version >= IDS_SINCE:
        return tuple((f.attribute, bytes([f.id])) for f in schema(cls))
    return tuple((f.attribute, bytes([len(f.name)]) + f.name.encode("ascii"))
                 for f in schema(cls))


@functools.lru_cache(maxsize=32)
def _decoding(cls: type) -> tuple[dict[Any, str], dict[str, Any], dict[str, dataclasses.Field]]:
    """Wire key (id, or version-1 name) -> attribute; the annotations; the fields."""
    keys: dict[Any, str] = {}
    for f in schema(cls):
        keys[f.id] = f.attribute
        keys[f.name] = f.attribute
    return keys, typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


# ---- encoding ----

def encode_record(obj: object, version: int) -> bytes:
    """Encode a dataclass instance for a stream of ``version``."""
    out = bytearray()
    fields = _encoding(type(obj), version)
    out.append(len(fields))
    for attr, key in fields:
        value = getattr(obj, attr)
        out += key
        if value is None:
            out.append(T_NONE)
        elif isinstance(value, bool):
            out.append(T_TRUE if value else T_FALSE)
        elif isinstance(value, int):       # IntEnum included
            out.append(T_INT)
            out += _I64.pack(int(value))
        elif isinstance(value, float):
            out.append(T_FLOAT)
            out += _F64.pack(value)
        elif isinstance(value, (bytes, bytearray)):
            out.append(T_BYTES)
            out += _U32.pack(len(value)) + bytes(value)
        elif isinstance(value, str):
            out.append(T_TEXT)
            out += pack_text(value)
        elif isinstance(value, ipaddress.IPv4Address):
            out.append(T_IP4)
            out += value.packed
        elif isinstance(value, ipaddress.IPv6Address):
            out.append(T_IP6)
            out += value.packed
        else:
            raise TypeError(f"{type(obj).__name__}.{attr}: cannot encode {type(value)}")
    return bytes(out)


# ---- decoding ----

_UnionType = type(int | None)


def _hint_accepts(hint: Any, value: object) -> object:
    """``value`` converted to what annotation ``hint`` wants; ValueError if it does not fit."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) \
        else (hint,)
    for opt in options:
        if opt is type(None) and value is None:
            return None
        if not isinstance(opt, type):
            continue
        if issubclass(opt, enum.IntEnum) and isinstance(value, int) and \
                not isinstance(value, bool):
            try:
                return opt(value)
            except ValueError:
                continue
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is not int and isinstance(value, opt):
            return value
    raise ValueError(f"{value!r} does not fit {hint}")


def _value(r: Reader, tag: int, what: str, max_bytes: int) -> object:
    """One value of type ``tag``."""
    if tag == T_NONE:
        return None
    if tag in (T_FALSE, T_TRUE):
        return tag == T_TRUE
    if tag == T_INT:
        return _I64.unpack(r.take(8))[0]
    if tag == T_FLOAT:
        return _F64.unpack(r.take(8))[0]
    if tag == T_BYTES:
        n = r.u32()
        if n > max_bytes:
            raise r.fail(f"{what}: {n} bytes")
        return bytes(r.take(n))
    if tag == T_TEXT:
        return r.text()
    if tag == T_IP4:
        return ipaddress.IPv4Address(bytes(r.take(4)))
    if tag == T_IP6:
        return ipaddress.IPv6Address(bytes(r.take(16)))
    raise r.fail(f"{what}: unknown type tag {tag}")


def decode_record(cls: type, r: Reader, version: int, max_bytes: int = 1 << 24) -> Any:
    """Decode one record of a ``version`` stream into ``cls``, checking types, repeats and
    that every required field came."""
    keys, hints, known = _decoding(cls)
    count = r.u8()
    if count > MAX_FIELDS:
        raise r.fail(f"{count} fields in a {cls.__name__} record")
    values: dict[str, object] = {}
    for _ in range(count):
        if version >= IDS_SINCE:
            key: Any = r.u8()
        else:
            key = bytes(r.take(r.u8())).decode("ascii", "replace")
        what = f"{cls.__name__} field {key}"
        value = _value(r, r.u8(), what, max_bytes)
        attr = keys.get(key)
        if attr is None:
            continue                       # a field this version does not know: ignored
        if attr in values:
            raise r.fail(f"{cls.__name__}.{attr} given twice")
        try:
            values[attr] = _hint_accepts(hints[attr], value)
        except ValueError as e:
            raise r.fail(f"{cls.__name__}.{attr}: {e}") from None
    for name, f in known.items():
        if name not in values and f.default is dataclasses.MISSING and \
                f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise r.fail(f"{cls.__name__}.{name} missing")
    return cls(**values)
