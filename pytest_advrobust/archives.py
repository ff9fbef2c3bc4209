"""How much a zip archive may expand to when read: ``.npz`` data, and torch's archives
(``torch.save`` state_dicts, TorchScript ``.pt``, ``torch.export`` ``.pt2``).

A member's uncompressed size is declared in the zip's central directory, and both readers
stop there: Python's ``zipfile`` returns at most ``file_size`` bytes of a member (and then
fails its CRC if the stream held more), torch's reader (miniz) allocates ``file_size`` bytes
for a member and refuses a stream that does not fit. So the declared sizes, checked before
any member is read or CRC-tested, bound what reading a file can cost, however small it is:
1.4 MB of deflated zeros can declare 1.46 GB.

No numpy or torch here: the configuration imports :data:`DEFAULT_MAX_READ_BYTES`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .config import ModelSpec

__all__ = ["COMPRESSED_SHARE", "DEFAULT_MAX_READ_BYTES", "KEY", "ReadLimit", "refusal"]

KEY = "max-read-bytes"
#: 4 GiB: three times a ViT-L/16 state_dict (1.2 GB), above ViT-H/14 (2.5 GB), a 30,000-image
#: 3x224x224 float32 .npz or all of CIFAR-10 at float32 (740 MB); still well under the 16 GB of a
#: standard CI runner, which a bomb at this size does not exhaust
DEFAULT_MAX_READ_BYTES = 4 * 2**30
#: torch.save and torch.export store every member uncompressed, and TorchScript deflates only
#: its code and debug info (218 KB for a scripted 48-layer transformer, at most 9:1). The
#: compressed members of a torch archive may expand to 1/64 of max-read-bytes in all (64 MiB
#: by default): torch holds a member whole in memory while it reads it, so a state_dict with a
#: 600 MB deflated member would otherwise cost 600 MB before torch refuses it
COMPRESSED_SHARE = 64


@dataclass(frozen=True)
class ReadLimit:
    """The most bytes one file's members may expand to, and where the user sets it."""

    bytes: int = DEFAULT_MAX_READ_BYTES
    #: how a person finds the key, for the message (``pyproject.toml [tool.advrobust] max-read-bytes``)
    key: str = f"[tool.advrobust] {KEY}"

    @classmethod
    def of(cls, spec: "ModelSpec") -> "ReadLimit":
        return cls(spec.max_read_bytes, spec.key(KEY))


def refusal(members: Sequence[zipfile.ZipInfo], limit: ReadLimit, *, torch: bool = False) -> str | None:
    """Why reading ``members`` (by their declared sizes) is refused, as one paragraph, or
    None when they fit ``limit``. ``torch``: a torch archive, whose compressed members may
    also expand to at most ``limit.bytes // COMPRESSED_SHARE`` together."""
    total = sum(info.file_size for info in members)
    if total > limit.bytes:
        largest = max(members, key=lambda info: info.file_size)
        together = (f"; the {len(members)} members read expand to {_size(total)} together"
                    if len(members) > 1 and total > largest.file_size else "")
        return (f"the archive member {largest.filename!r} declares {_size(largest.file_size)} "
                f"uncompressed ({_stored(largest)}){together}, more than {limit.key} = "
                f"{limit.bytes} ({_size(limit.bytes)}) allows a file to expand to when read. A "
                "small file declaring this much is a zip bomb; a genuine one is an unusually "
                "large model or data set. Nothing was read. If the file is genuine, raise "
                f"{limit.key} (to {_whole_gib(total)}, say); otherwise rebuild it from its source.")
    if not torch:
        return None
    packed = [info for info in members if info.compress_type != zipfile.ZIP_STORED]
    budget = limit.bytes // COMPRESSED_SHARE
    packed_total = sum(info.file_size for info in packed)
    if packed_total <= budget:
        return None
    largest = max(packed, key=lambda info: info.file_size)
    together = (f"; its {len(packed)} compressed members expand to {_size(packed_total)} together"
                if len(packed) > 1 else "")
    return (f"the archive member {largest.filename!r} is compressed and declares "
            f"{_size(largest.file_size)} uncompressed ({_stored(largest)}){together}, more than "
            f"1/{COMPRESSED_SHARE} of {limit.key} ({_size(budget)}) allows for compressed "
            "members. torch.save and torch.export store tensors "
            "uncompressed and TorchScript compresses only its code, and torch holds a member "
            "whole in memory while it reads it: a file like this is a zip bomb, or was rewritten "
            "by another tool. Nothing was read. Save the model again with torch.save, "
            "torch.jit.save or torch.export.save; if the file is genuine, raise "
            f"{limit.key} (to {_whole_gib(packed_total * COMPRESSED_SHARE)}, say).")


def _stored(info: zipfile.ZipInfo) -> str:
    if info.compress_type == zipfile.ZIP_STORED:
        return "stored uncompressed"
    ratio = info.file_size / max(info.compress_size, 1)
    return f"from {_size(info.compress_size)} in the file, {ratio:,.0f}:1"


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} bytes"


def _whole_gib(count: int) -> int:
    """``count`` rounded up to whole GiB, in bytes: a value to suggest for the key."""
    return -(-count // 2**30) * 2**30
