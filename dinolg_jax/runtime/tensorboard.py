"""A minimal TensorBoard event-file writer for scalars, so metrics need no TensorFlow.

Event files are TFRecord-framed (length, masked CRC-32C, payload, masked CRC-32C) with
hand-encoded ``Event`` protos. Used by ``runtime.metrics_log.MetricsLog`` when
``config.tensorboard``.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord framing needs; bytewise, fine for small records."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


class TensorBoardWriter:
    """Minimal TensorBoard event-file writer for scalars (no TensorFlow needed).

    Writes ``events.out.tfevents.<time>.dinolg`` in TFRecord framing (length, masked
    CRC-32C, payload, masked CRC-32C) with hand-encoded ``Event`` protos: a
    ``file_version`` header, then one ``Event{wall_time, step, summary{value{tag,
    simple_value}}}`` per scalar.
    """

    def __init__(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self.path = logdir / f"events.out.tfevents.{int(time.time())}.dinolg"
        self._file = self.path.open("ab")
        self._write(self._event(time.time(), 0, b"\x1a" + _bytes_field(b"brain.Event:2")))

    @staticmethod
    def _event(wall_time: float, step: int, body: bytes) -> bytes:
        return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Appends one scalar summary."""
        val = b"\x0a" + _bytes_field(tag.encode()) + b"\x15" + struct.pack("<f", value)
        summary = b"\x0a" + _bytes_field(val)
        self._write(self._event(time.time(), step, b"\x2a" + _bytes_field(summary)))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", _masked_crc(header)))
        self._file.write(record + struct.pack("<I", _masked_crc(record)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _bytes_field(payload: bytes) -> bytes:
    return _varint(len(payload)) + payload
