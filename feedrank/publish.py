"""Atomic publish: build beside the target, then one rename. The one place that does it.

A writer that dies mid-write leaves the previous output untouched, and a reader never sees a
half-written file or folder: everything is built in a hidden sibling of the target (same
filesystem, so the final rename is atomic) and swapped in. Lake partitions, training runs,
model versions, the champion pointer and reports all go through here.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temp_sibling(target: Path) -> Path:
    """A hidden, unique sibling path of ``target`` (its parent is created)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")


def swap_in(ready: Path, target: Path) -> None:
    """Replace folder ``target`` by ``ready`` with renames; the old copy is deleted afterwards."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        target.rename(old)
    ready.rename(target)
    if old.exists():
        shutil.rmtree(old)


def write_dir_atomic(target: Path, build: Callable[[Path], None], *, replace: bool = True) -> None:
    """Run ``build(tmp)`` to fill a temp folder, then publish it as ``target``.

    If ``build`` raises, the temp folder is removed and ``target`` is left as it was. With
    ``replace=False`` an existing ``target`` is never replaced (the rename fails instead).
    """
    tmp = temp_sibling(target)
    try:
        tmp.mkdir()
        build(tmp)
        if replace:
            swap_in(tmp, target)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_text(payload: Any, *, sort_keys: bool = True, default: Callable = str) -> str:
    """Pretty JSON with a final newline (key-sorted by default: stable bytes for a payload)."""
    return json.dumps(payload, indent=2, sort_keys=sort_keys, default=default) + "\n"


def write_json(path: Path, payload: Any) -> None:
    """:func:`json_text` of ``payload`` into ``path`` (inside a folder being built)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text(payload))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace file ``path`` by ``text`` atomically (temp file, fsync, ``os.replace``)."""
    tmp = temp_sibling(path)
    try:
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(
    path: Path, payload: Any, *, sort_keys: bool = True, default: Callable = str
) -> None:
    """Replace file ``path`` by :func:`json_text` of ``payload`` atomically."""
    write_text_atomic(path, json_text(payload, sort_keys=sort_keys, default=default))
