"""Writing a converter's or exporter's output directory all or nothing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from neox.checkpoint.files import CheckpointError
from neox.interop.file_modes import follow_umask


def check_out(out: str, force: bool) -> None:
    """Refuse a non-empty ``out`` unless ``force``: called before the expensive work starts."""
    if os.path.exists(out) and os.listdir(out) and not force:
        raise CheckpointError(f"--out {out} exists and is not empty (use --force to overwrite)")


@contextmanager
def publish_dir(out: str, force: bool) -> Iterator[str]:
    """Yield a temporary sibling of ``out`` to write into; when the block ends without an error it
    replaces ``out`` in one rename (modes following the umask), otherwise it is removed and ``out``
    is left as it was. A non-empty ``out`` is refused unless ``force``."""
    check_out(out, force)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        follow_umask(tmp)  # safetensors writes 0600, copied tokenizer files keep their source's mode
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
