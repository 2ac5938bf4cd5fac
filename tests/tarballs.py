"""Taking a gzipped tar (a publication bundle) apart and putting it back together, for tests
that tamper with one member and check that verification notices."""

from __future__ import annotations

import io
import tarfile


def members(blob: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The regular files of a .tar.gz, in archive order, with their contents."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]


def repack(items: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A .tar.gz of ``items`` as given (each header's size follows its data)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in items:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
