"""Safe writes: nothing the user owns is deleted, a killed process never leaves a half-written file.

Every file the package writes (weights, training state, JSON, images) goes to a temporary name in the
destination's directory and is renamed over the destination once complete (`os.replace` is atomic on
POSIX and Windows). Folders are assembled the same way and moved into place at the end.

Ownership. A command only ever replaces what segformer itself wrote. `check_output_dir` is the one
policy every writer asks before it writes into a folder: an output folder of each `OutputKind` (a model
directory, a run folder, a dataset, ...) is recognised by the names, types and contents of its entries.
A folder that is missing, empty or recognisably ours may be written; a non-empty folder holding
anything else is refused unless the caller passes ``overwrite``, and even then only our own entries are
replaced: the user's files stay where they are. A regular file is never replaced by a folder, nor a
folder by a file, whatever ``overwrite`` says.

The filesystem is input like any other: an `OSError` while writing (read-only or full disk, no
permission, a file where a folder should be) becomes a `SegformerError` naming the destination and
the system's reason, and the temporary file is removed. New files and folders get the permissions the
user's umask gives (temporary files are created private and opened up before the rename).

The package by job: `atomic` (atomic files, Ctrl-C held during a write), `ownership` (`OutputKind`,
`check_output_dir`, `atomic_dir`), `locks` (one writer per folder), `manifest` (`OutputFolder`, the output
policy), `policy` (`staged_output`, `check_output`, `refuse_foreign`) and `names` (our bookkeeping's file
names). Every public name is importable from `segformer.fileio`.
"""

from .atomic import (
    atomic_file,
    atomic_path,
    current_umask,
    make_dirs,
    write_bytes,
    write_error,
    write_json,
    write_text,
)
from .locks import acquire_lock, release_lock, same_file, writer_lock
from .manifest import OutputFolder, sha256_file
from .names import JOURNAL_NAME, LOCK_NAME, MANIFEST_FORMAT, MANIFEST_NAME, STAGING_PREFIX
from .ownership import KINDS, OutputKind, atomic_dir, check_output_dir, check_output_file, is_ours
from .policy import check_output, refuse_foreign, staged_output

__all__ = [
    "JOURNAL_NAME",
    "KINDS",
    "LOCK_NAME",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "STAGING_PREFIX",
    "OutputFolder",
    "OutputKind",
    "acquire_lock",
    "atomic_dir",
    "atomic_file",
    "atomic_path",
    "check_output",
    "check_output_dir",
    "check_output_file",
    "current_umask",
    "is_ours",
    "make_dirs",
    "refuse_foreign",
    "release_lock",
    "same_file",
    "sha256_file",
    "staged_output",
    "write_bytes",
    "write_error",
    "write_json",
    "write_text",
    "writer_lock",
]
