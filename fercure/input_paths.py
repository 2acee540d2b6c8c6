"""Paths from the input, checked before anything opens them: inside the input root (symbolic links
included), an image file name, a regular file.

``PathLocator(root, encoding).locate(cell)`` turns a label file's path cell into a posix path
relative to the root (``..`` and ``.`` resolved lexically, so one file always gets one sample_id),
or says what is wrong with it and how to fix it: a URL, a Windows absolute path, a path that
escapes the root or does not exist (with a hint when the paths repeat the root folder's name).
A backslash is a file-name character when such a file exists, else a Windows separator; a name
read from a cp1252/latin-1 label file is also tried as those bytes on disk.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from pathlib import Path

from fercure.images import IMAGE_EXTENSIONS


_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def within(path: str, base: str) -> bool:
    """Whether ``path`` is ``base`` or below it (both absolute and normalised)."""
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def is_image_name(name: str) -> bool:
    """Whether the name has an image extension fercure decodes."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


EXT_HINT = "supported extensions: " + " ".join(sorted(IMAGE_EXTENSIONS))


def safe_is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, False where it cannot be told (a folder that cannot be read)."""
    try:
        return entry.is_dir()  # follows symlinks; escaping links are checked when walking
    except OSError:
        return False


class PathLocator:
    """Turns a path cell into a path relative to the input root, or says what is wrong with it."""

    def __init__(self, root: Path, encoding: str | None):
        self.root = root
        self.root_s = os.fspath(root)
        self.abs_root = os.path.abspath(self.root_s)
        self.real_root = os.path.realpath(self.root_s)
        self.encoding = encoding
        self._cache: dict[str, tuple[str | None, str, str]] = {}

    def locate(self, raw: str) -> tuple[str | None, str, str]:
        """Return (relative posix path, "", "") or (None, problem, hint). A path listed many times
        is looked up on disk once."""
        found = self._cache.get(raw)
        if found is None:
            found = self._cache[raw] = self._locate(raw)
        return found

    def _locate(self, raw: str) -> tuple[str | None, str, str]:
        p = raw.strip()
        if "\x00" in p:
            return None, "path contains a NUL character", "fix the path in the label file"
        if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", p):
            return None, "path is a URL", "download the images first and list their local paths"
        if _WINDOWS_ABS.match(p):
            return None, "path escapes the input root", (
                f"a Windows absolute path cannot be located; write paths relative to {self.root}")
        if "\\" in p:
            # A literal backslash is a legal file-name character on POSIX; prefer it when such a
            # file exists, else read it as a Windows separator.
            rel, problem, hint = self._locate_one(p)
            if rel is not None:
                return rel, "", ""
            rel, problem, hint = self._locate_one(p.replace("\\", "/"))
            if rel is None and problem == "path does not exist":
                hint += " (backslashes were read as folder separators)"
            return rel, problem, hint
        rel, problem, hint = self._locate_one(p)
        if rel is None and problem == "path does not exist" and self.encoding not in (None, "utf-8"):
            # The label file is cp1252/latin-1 and the names on disk may be in that encoding too.
            try:
                alt = os.fsdecode(p.encode(self.encoding))
            except UnicodeEncodeError:
                alt = p
            if alt != p:
                rel2, _, _ = self._locate_one(alt)
                if rel2 is not None:
                    return rel2, "", ""
        return rel, problem, hint

    def _locate_one(self, p: str) -> tuple[str | None, str, str]:
        escape_hint = (f"paths must stay inside the input root {self.root}; copy the file in or "
                       "choose a higher input root")
        if os.path.isabs(p):
            ap = os.path.normpath(p)
            if ap in (self.abs_root, self.real_root):
                return None, "path is a directory", "give the path of an image file"
            for base in (self.abs_root, self.real_root):
                if within(ap, base):
                    rel = os.path.relpath(ap, base).replace(os.sep, "/")
                    break
            else:
                return None, "path escapes the input root", escape_hint
        else:
            rel = posixpath.normpath(p)
            if rel == ".." or rel.startswith("../"):
                return None, "path escapes the input root", escape_hint
            if rel == ".":
                return None, "path is a directory", "give the path of an image file"
        if not is_image_name(rel):
            return None, "not an image file extension", EXT_HINT
        full = os.path.join(self.root_s, rel)
        if not os.path.lexists(full):
            return None, "path does not exist", self._missing_hint(rel)
        if not within(os.path.realpath(full), self.real_root):
            return None, "path escapes the input root", (
                "a symbolic link that leads outside the input root is not followed; copy the file in")
        try:
            st = os.stat(full)
        except FileNotFoundError:
            return None, "path does not exist", "it is a broken symbolic link"
        except OSError as e:
            return None, f"cannot access path: {e.strerror or e}", "check the file's permissions"
        if stat.S_ISDIR(st.st_mode):
            return None, "path is a directory", "give the path of an image file"
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file", "give the path of an image file"
        return rel, "", ""

    def _missing_hint(self, rel: str) -> str:
        hint = f"no file at {self.root_s}/{rel}; paths are relative to the input root {self.root}"
        first, _, remainder = rel.partition("/")
        if remainder and first == os.path.basename(self.abs_root) and os.path.lexists(
            os.path.join(self.root_s, remainder)
        ):
            hint += f" (paths seem to include the root folder's name {first!r}; drop that prefix)"
        return hint
