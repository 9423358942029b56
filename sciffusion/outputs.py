"""Output paths of the commands: checked before a command works, published together when it is done.

A command first checks every path it will write (:func:`check_folder`, :func:`check_file`), then
does its work, then writes all its files inside one :func:`publish_together` block: each file goes
to a temporary beside its target, and only when the block ends do the temporaries replace their
targets. If anything raises, the temporaries and the folders the block created are removed, so a
failed command leaves no new file behind.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sciffusion.train.checkpoint import atomic_path

__all__ = ["IMAGE_SUFFIXES", "OutputError", "check_file", "check_folder", "publish_together"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf", ".tif", ".tiff", ".bmp", ".webp")


class OutputError(ValueError):
    """An output path a command cannot write (the message is one line naming it)."""


def check_folder(path: str | Path, label: str) -> Path:
    """``path`` as a folder to create or fill: refused if it, or a folder above it, is an existing file."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            break
        if candidate.exists() or candidate.is_symlink():
            if candidate == path:
                raise OutputError(f"{label} {path} is an existing file, not a folder")
            raise OutputError(f"{label} {path}: {candidate} is an existing file, not a folder")
    return path


def check_file(path: str | Path, label: str, suffixes: Sequence[str], folder_must_exist: bool = False) -> Path:
    """``path`` as a file to write: one of ``suffixes`` (lower case, with the dot), not an existing folder,
    in a folder that exists (``folder_must_exist``) or can be created."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        shown = repr(path.suffix) if path.suffix else "no suffix"
        raise OutputError(f"{label} {path}: unsupported file type ({shown}; use {', '.join(suffixes)})")
    if path.is_dir():
        raise OutputError(f"{label} {path} is an existing folder, not a file")
    if folder_must_exist and not path.parent.is_dir():
        raise OutputError(f"{label} {path}: folder {path.parent} does not exist")
    check_folder(path.parent, label)
    return path


def _make_folders(folder: Path, created: list[Path]) -> None:
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for item in reversed(missing):
        item.mkdir()
        created.append(item)


@contextmanager
def publish_together(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporaries for ``paths`` (same suffixes), in their targets' folders (created if missing).

    When the block ends they all replace their targets; if it raises, they are removed together with
    the folders this call created, and the targets are left as they were.
    """
    targets = [Path(p) for p in paths]
    created: list[Path] = []
    try:
        for target in targets:
            _make_folders(target.parent, created)
        with ExitStack() as stack:
            yield [stack.enter_context(atomic_path(t)) for t in targets]
    except BaseException:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
