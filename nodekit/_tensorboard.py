"""A TensorBoard event-file writer with no dependency: scalars only.

TensorBoard reads TFRecord files of `Event` protocol buffers. The few messages a scalar
log needs are encoded here by hand (`Event`: `wall_time` = 1, `step` = 2,
`file_version` = 3, `summary` = 5, `session_log` = 7; `Summary.value` = 1;
`Summary.Value`: `tag` = 1, `simple_value` = 2; `SessionLog.status` = 1, START = 1),
and each record is framed as TFRecord does: length (uint64 LE), masked CRC-32C of the
length, data, masked CRC-32C of the data.

A resumed run writes a `SessionLog.START` event at the step it resumes from: TensorBoard
then drops the points at or after that step from earlier files (the ones the resumed run
recomputes), so the curves show every step once.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from pathlib import Path


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: framing and checksums around `data`."""
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", _masked(n)) + data + struct.pack("<I", _masked(data))


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf encodes it
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, *, wall_time: float | None = None, file_version: str | None = None,
          scalars: dict[str, float] | None = None, session_start: bool = False) -> bytes:
    """An encoded `Event`."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", time.time() if wall_time is None else wall_time)
    out += _varint(2 << 3) + _varint(int(step))
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5)
                         + struct.pack("<f", value))
            for tag, value in scalars.items())
        out += _field_bytes(5, values)
    if session_start:
        out += _field_bytes(7, _varint(1 << 3) + _varint(1))
    return out


class EventWriter:
    """Appends scalar events to a new `events.out.tfevents.*` file in `folder`.

    **Arguments:**

    - `folder`: the log folder (one run: point `tensorboard --logdir` at it or above).
    - `resume_step`: the step a resumed run restarts from (TensorBoard then discards
      the earlier files' points from there on); `None` or 0 for a fresh run.
    """

    def __init__(self, folder: str | Path, resume_step: int | None = None):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # time_ns (fixed width) first: TensorBoard reads the files in name order, so a
        # resumed run's file sorts after the one it continues
        name = f"events.out.tfevents.{time.time_ns()}.{socket.gethostname()}.{os.getpid()}"
        self.path = folder / name
        self._f = open(self.path, "ab")
        self._write(event(0, file_version="brain.Event:2"))
        if resume_step:
            self._write(event(resume_step, session_start=True))

    def _write(self, data: bytes) -> None:
        self._f.write(record(data))
        self._f.flush()

    def scalars(self, step: int, values: dict, prefix: str) -> None:
        """Write the finite numbers of `values` (other entries are skipped) as
        `prefix/key` at `step`."""
        clean = {f"{prefix}/{k}": float(v) for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and math.isfinite(v) and k != "step"}
        if clean:
            self._write(event(step, scalars=clean))

    def close(self) -> None:
        self._f.close()
