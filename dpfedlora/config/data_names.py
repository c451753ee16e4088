"""What a ``data.name`` names, decided from its text alone: a built-in, a local file, or a hub
dataset, and the hub only when the name says so.

* ``builtin:<name>``: a dataset shipped with the package (``builtin:synthetic``, ...).
* ``hub:<id>``: a Hugging Face hub dataset, fetched over the network (``hub:imdb``).
* anything that looks like a path (a ``/`` or ``\\``, a leading ``.`` or ``~``, or a file
  extension): a local file, only ever read from disk, with a supported extension.

A bare name that is none of these is an error, never a hub request: a local file of an
unsupported extension (``notes.txt``) must not leave the machine as a repository id.
"""

from __future__ import annotations

from pathlib import PurePosixPath

__all__ = [
    "BUILTIN_PREFIX",
    "HUB_PREFIX",
    "FILE_BUILDERS",
    "data_name_kind",
    "file_extensions",
    "looks_like_path",
]

BUILTIN_PREFIX = "builtin:"
HUB_PREFIX = "hub:"
# extension -> the datasets packaged builder that reads it (a .tsv is a csv with tabs)
FILE_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


def file_extensions() -> str:
    return "/".join(FILE_BUILDERS)


def looks_like_path(name: str) -> bool:
    """A path separator, a leading ``.`` or ``~``, or a file extension."""
    return (
        "/" in name
        or "\\" in name
        or name.startswith((".", "~"))
        or bool(PurePosixPath(name).suffix)
    )


def data_name_kind(key: str, name: str) -> str:
    """``builtin``, ``hub`` or ``file``; raises ValueError (one line naming ``key``) for a name
    that is none of them, or a file whose extension no reader supports."""
    if name.startswith(BUILTIN_PREFIX):
        return "builtin"
    if name.startswith(HUB_PREFIX):
        if not name[len(HUB_PREFIX) :].strip():
            raise ValueError(
                f"`{key}` = {name!r} names no hub dataset. Write hub:<id>, e.g. hub:imdb."
            )
        return "hub"
    if looks_like_path(name):
        suffix = PurePosixPath(name.replace("\\", "/")).suffix
        if suffix.lower() not in FILE_BUILDERS:
            what = f"extension {suffix!r}" if suffix else "no file extension"
            raise ValueError(
                f"`{key}` = {name!r} is a local path with {what}; local files are read from "
                f"disk only, as {file_extensions()}. Convert the file to one of those, or write "
                "hub:<id> for a hub dataset."
            )
        return "file"
    raise ValueError(
        f"`{key}` = {name!r} is not a built-in (builtin:...), a local file "
        f"({file_extensions()}) or a hub dataset. Write hub:{name} to fetch it from the hub "
        "(needs a network), or give the file's path."
    )
