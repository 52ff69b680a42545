"""The plugin pipe protocol, in one pure module: fixed binary frame headers, payloads opaque.

A plugin is any program that reads frames on its stdin (tasks from the agent) and writes
frames on its stdout (records for the fleet). Every frame is a 16-byte header followed by the
payload, all integers big-endian:

    offset size field
    0      2    magic      0x4846 ("HF")
    2      2    data_type  the plugin's record type (tasks: see TaskType)
    4      4    length     payload bytes that follow (at most 512 KiB by default)
    8      8    ts_ns      event time, nanoseconds since the Unix epoch
    16     len  payload    msgpack, encoded once by the plugin

The agent never decodes payloads: it checks headers, batches whole frames (header included)
and publishes the batch as is, with host, plugin and sequence numbers in NATS headers.
Consumers split a batch back into frames with `iter_frames` and decode each payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from hidsd.base.errors import ProtocolError

MAGIC = 0x4846
HEADER = struct.Struct(">HHIQ")
HEADER_SIZE = HEADER.size  # 16
#: a frame must fit, with room to spare, in one NATS message (max_payload defaults to 1 MiB)
DEFAULT_MAX_FRAME_BYTES = 512 << 10


class TaskType(IntEnum):
    """Frames the agent sends to a plugin."""

    CONFIG = 1  # payload: msgpack map of the plugin's params (on start and on change)
    SHUTDOWN = 2  # payload: empty; close and exit
    RUN = 3  # payload: msgpack map; a task for the plugin (e.g. "snapshot now")


@dataclass(frozen=True, slots=True)
class Header:
    data_type: int
    length: int
    ts_ns: int


def pack_header(data_type: int, length: int, ts_ns: int) -> bytes:
    if not 0 <= data_type <= 0xFFFF:
        raise ProtocolError(f"frame data_type {data_type} out of range 0..65535")
    if not 0 <= length <= 0xFFFFFFFF:
        raise ProtocolError(f"frame length {length} out of range")
    return HEADER.pack(MAGIC, data_type, length, ts_ns)


def frame(data_type: int, payload: bytes, ts_ns: int) -> bytes:
    return pack_header(data_type, len(payload), ts_ns) + payload


def unpack_header(data: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Header:
    """Parse and check one header; ProtocolError for garbage or an oversized frame."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"frame header: need {HEADER_SIZE} bytes, got {len(data)}")
    magic, data_type, length, ts_ns = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"frame header: bad magic 0x{magic:04x} (garbage on the pipe?)")
    if length > max_frame_bytes:
        raise ProtocolError(f"frame of {length} bytes exceeds {max_frame_bytes}", length=length)
    return Header(data_type, length, ts_ns)


def iter_frames(
    batch: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Iterator[tuple[Header, bytes]]:
    """Split a published batch into (header, payload); ProtocolError if it is truncated."""
    view = memoryview(batch)
    pos = 0
    while pos < len(view):
        if len(view) - pos < HEADER_SIZE:
            raise ProtocolError("batch: truncated frame header")
        hdr = unpack_header(bytes(view[pos : pos + HEADER_SIZE]), max_frame_bytes)
        pos += HEADER_SIZE
        if len(view) - pos < hdr.length:
            raise ProtocolError("batch: truncated frame payload")
        yield hdr, bytes(view[pos : pos + hdr.length])
        pos += hdr.length


# NATS headers on a telemetry batch (the frames themselves are the body).
H_HOST = "Hidsd-Host"
H_PLUGIN = "Hidsd-Plugin"
H_EPOCH = "Hidsd-Epoch"  # the pipeline's start (ns): sequences restart with a new epoch
H_SEQ = "Hidsd-Seq"  # sequence number of the first record in the batch (per epoch)
H_COUNT = "Hidsd-Count"
H_MSG_ID = "Nats-Msg-Id"  # JetStream de-duplication: resent batches are stored once


def batch_headers(host: str, plugin: str, epoch: int, first_seq: int, count: int) -> dict[str, str]:
    return {
        H_HOST: host,
        H_PLUGIN: plugin,
        H_EPOCH: str(epoch),
        H_SEQ: str(first_seq),
        H_COUNT: str(count),
        H_MSG_ID: f"{host}.{plugin}.{epoch}.{first_seq}",
    }
