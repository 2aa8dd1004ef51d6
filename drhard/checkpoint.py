"""Checkpoints that can be trusted: a checksum record written last, verified before a resume.

A checkpoint is a folder of files (weights, optimizer, scheduler, RNG, state).
A kill while saving, a full disk or a copy gone wrong can leave a folder whose
files all exist but one is truncated; resuming from it dies deep inside a
library, or worse, resumes from garbage.  So every save ends with
``checksums.json``::

    {"schema": "drhard-checkpoint/1", "files": {"<relative path>": {"size": n, "sha256": "..."}}}

written after every other file (atomically), and ``verify_checkpoint`` checks
each listed file's size and hash.  A folder without the record (written before
it existed, or by another tool) is verified by parsing its files instead
(JSON parses, safetensors headers read, torch files load with
``weights_only=True``).  ``newest_verified`` walks candidates newest first and
skips, with a warning naming the file, every one that does not verify.

Resuming (both trainers): ``find_checkpoints`` lists a run folder's checkpoints and
``resolve_resume`` turns ``--resume_from_checkpoint`` into the folder to resume:
``auto`` (also ``last``, ``True``: the words of ``RESUME_AUTO``) is the newest
checkpoint that verifies; a named folder must verify.

Cost: hashing reads the checkpoint once more (about 1.5 GB for roberta-base with
its optimizer state: a few seconds) at each save and at each resume.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from .errors import DataError
from .io import atomic_write, sha256_file

logger = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"
SCHEMA = "drhard-checkpoint/1"
RESUME_AUTO = ("auto", "last", "True", "true")  # --resume_from_checkpoint: the newest checkpoint that verifies


def _files(folder: str) -> Iterable[str]:
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != CHECKSUMS and not name.startswith("."):
                yield rel


def write_checksums(folder: str) -> str:
    """Record size and sha256 of every file under ``folder``; call it after the last file of a save is written."""
    files = {}
    for rel in _files(folder):
        path = os.path.join(folder, rel)
        files[rel] = {"size": os.path.getsize(path), "sha256": sha256_file(path)}
    out = os.path.join(folder, CHECKSUMS)
    with atomic_write(out) as f:
        json.dump({"schema": SCHEMA, "files": files}, f, indent=1, sort_keys=True)
    return out


def _parse_problem(path: str) -> Optional[str]:
    """Try to read one file of a checkpoint without a checksum record; a problem string, or None."""
    name = os.path.basename(path)
    try:
        if name.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                json.load(f)
        elif name.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        elif name.endswith((".pt", ".pth", ".bin")):
            import torch
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read means "does not verify"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{path}: cannot be read ({first})"
    return None


def verify_checkpoint(folder: str, required: Sequence[str] = ()) -> Optional[str]:
    """None when ``folder`` is a complete, intact checkpoint; else one line naming the bad or missing file.

    ``required``: relative paths that must exist (e.g. the optimizer state).
    """
    if not os.path.isdir(folder):
        return f"{folder}: not a directory"
    for rel in required:
        if not os.path.isfile(os.path.join(folder, rel)):
            return f"{os.path.join(folder, rel)}: missing (the save was interrupted?)"
    record_path = os.path.join(folder, CHECKSUMS)
    if os.path.exists(record_path):
        try:
            with open(record_path, encoding="utf-8") as f:
                record = json.load(f)
            files = record["files"]
            if not isinstance(files, dict):
                raise TypeError("'files' is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{record_path}: not a readable checksum record ({e})"
        for rel, want in sorted(files.items()):
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                return f"{path}: missing"
            size = os.path.getsize(path)
            if size != want.get("size"):
                return f"{path}: {size} bytes, the checkpoint recorded {want.get('size')} (truncated or replaced)"
            if sha256_file(path) != want.get("sha256"):
                return f"{path}: contents differ from the checksum recorded at save time (corrupted)"
        return None
    for rel in _files(folder):
        problem = _parse_problem(os.path.join(folder, rel))
        if problem:
            return problem
    return None


def newest_verified(candidates: Sequence[Tuple[int, str]], required: Sequence[str] = ()) -> Optional[str]:
    """The newest ``(step, path)`` candidate that verifies; every one skipped is logged with its reason."""
    for step, path in sorted(candidates, reverse=True):
        problem = verify_checkpoint(path, required)
        if problem is None:
            return path
        logger.warning("skipping checkpoint %s (step %d): %s", path, step, problem)
    return None


def find_checkpoints(folder: str, name: "re.Pattern[str]", step: Callable[[str], int]) -> List[Tuple[int, str]]:
    """``(step, path)`` of every sub-folder of ``folder`` whose whole name matches ``name``, oldest first
    (unverified; temp folders of killed saves never match).  ``step(path)`` gives a checkpoint's step."""
    if not os.path.isdir(folder):
        return []
    found = []
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if name.fullmatch(entry) and os.path.isdir(path):
            found.append((step(path), path))
    return sorted(found)


def resolve_resume(folder: str, resume: Optional[str], candidates: Sequence[Tuple[int, str]],
                   required: Sequence[str] = (), none_verified: str = "error") -> Optional[str]:
    """The checkpoint to resume from, for ``--resume_from_checkpoint resume``.

    None -> None.  A word of ``RESUME_AUTO`` -> the newest of ``candidates`` (``find_checkpoints`` of
    ``folder``) that verifies, None when there is none; when there are some but none verifies,
    ``none_verified="error"`` raises ``DataError`` naming the newest one's bad file and ``"scratch"``
    starts from scratch with a warning.  A folder -> itself, which must verify (``DataError`` naming the
    bad file otherwise).
    """
    if not resume:
        return None
    if resume in RESUME_AUTO:
        if not candidates:
            logger.info("%s holds no checkpoint: starting from scratch", folder)
            return None
        path = newest_verified(candidates, required)
        if path is None:
            if none_verified == "error":
                raise DataError(f"none of the {len(candidates)} checkpoints in {folder} verifies; the newest: "
                                f"{verify_checkpoint(candidates[-1][1], required)} (use --overwrite_output_dir "
                                "to start over)")
            logger.warning("no checkpoint in %s verifies: starting from scratch", folder)
            return None
        if path != candidates[-1][1]:
            logger.warning("resuming from %s, the newest checkpoint that verifies (newer ones were skipped, see "
                           "above)", path)
        return path
    if not os.path.isdir(resume):
        raise DataError(f"--resume_from_checkpoint {resume}: no such directory")
    problem = verify_checkpoint(resume, required)
    if problem is not None:
        raise DataError(f"{problem} (--resume_from_checkpoint {resume} cannot be resumed: name another checkpoint, "
                        "or use auto)")
    return resume
