"""The secret salt that keys subject pseudonyms and hashed UIDs (the DICOM adapter's): where it comes from
and where a corpus keeps it.

A pseudonym is a keyed hash of a PatientID. Patient IDs are short and often sequential, so anyone who knows
the key can recompute the pseudonym of every candidate ID; the key must therefore be secret and never a
public default. ``$MEDFM_SUBJECT_SALT`` gives one; otherwise a corpus build draws a random one and keeps
it in the corpus folder (``secrets/subject_salt``, readable by its owner only), so a rebuild gives the same
pseudonyms and splits. Nothing else a build writes (config, provenance, summary, catalog, data card, logs)
holds the salt. Outside a corpus (an adapter opened on its own), the salt is ``$MEDFM_SUBJECT_SALT`` or one
random salt per process: pseudonyms agree within the process and cannot be linked across processes.
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

from medfm.errors import ConfigError
from medfm.runs import SECRETS

SALT_ENV = "MEDFM_SUBJECT_SALT"
SALT_FILE = Path(SECRETS) / "subject_salt"  # relative to the corpus folder


def new_salt() -> str:
    """256 random bits, hex-encoded."""
    return secrets.token_hex(32)


@functools.cache
def _process_salt() -> str:
    return new_salt()


def standalone_salt() -> str:
    """The salt of an adapter used outside a corpus: ``$MEDFM_SUBJECT_SALT``, else this process's own."""
    return os.environ.get(SALT_ENV) or _process_salt()


def corpus_salt(corpus: Path) -> str:
    """The salt a build of ``corpus`` uses: ``$MEDFM_SUBJECT_SALT``, else the one an earlier build of the same
    folder kept, else a new random one. A given salt that differs from the kept one is refused: it would
    silently give every DICOM subject a new pseudonym and move it to another split."""
    given, kept = os.environ.get(SALT_ENV), read_corpus_salt(corpus)
    if given and kept and given != kept:
        raise ConfigError(
            f"{SALT_ENV} differs from the salt {corpus} was built with; unset it to keep that salt, "
            f"or delete {corpus / SALT_FILE} to start the corpus over with new pseudonyms"
        )
    return given or kept or new_salt()


def read_corpus_salt(corpus: Path) -> str | None:
    path = corpus / SALT_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def write_corpus_salt(corpus: Path, salt: str) -> None:
    """Keep ``salt`` in ``corpus/secrets/subject_salt``, created readable by its owner only (never, even
    briefly, by others)."""
    folder = corpus / SALT_FILE.parent
    folder.mkdir(mode=0o700, exist_ok=True)
    descriptor = os.open(corpus / SALT_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(salt + "\n")
