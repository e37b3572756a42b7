"""Private files of the store: a ``0700`` data directory, ``0600`` files, and the patient-id hash key kept
apart from the database.

The key that pseudonymises patient ids in the card audit (HMAC-SHA256) comes from ``NMS_CDS_AUDIT_HASH_KEY``,
else from the file ``NMS_CDS_AUDIT_HASH_KEY_FILE``, else from ``audit-hash.key`` in ``NMS_CDS_DATA_DIR``
(created on first start). A copied database alone then does not let anyone test a list of patient ids against
its hashes. Stores of earlier versions kept the key in the database (``store_meta``): it is moved to the file
once, on start, and deleted from the database. A key file that another account could read is refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from cds_service.config import Settings
from cds_service.errors import ConfigError, StoreUnavailable
from cds_service.store.base import Store

KEY_FILENAME = "audit-hash.key"


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as ``0700`` whatever the umask; an existing directory is left as is
    (it may be shared, e.g. ``/srv``): the files in it are ``0600`` anyway."""
    if path.is_dir():
        return
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:  # created meanwhile by another worker
        return
    except OSError as exc:
        raise StoreUnavailable(f"the data directory cannot be created ({type(exc).__name__})") from None
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def tighten(path: Path) -> None:
    """Make an existing file of ours ``0600`` (files of earlier versions were created ``0644``)."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def key_path(settings: Settings) -> Path:
    return settings.audit_hash_key_file or settings.data_dir / KEY_FILENAME


def read_key(path: Path) -> bytes:
    """The key in ``path``: hex as written by the service, other text as its UTF-8 bytes. ConfigError when
    the file is readable by the group or by others, or empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"audit hash key file {path}: cannot be read ({exc.strerror})") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise ConfigError(f"audit hash key file {path} is readable by other accounts (mode {mode:04o}); "
                              f"make it private: chmod 600 {path}")
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not text:
        raise ConfigError(f"audit hash key file {path} is empty")
    try:
        return bytes.fromhex(text) if len(text) == 64 else text.encode("utf-8")
    except ValueError:
        return text.encode("utf-8")


def write_key(path: Path, key_hex: str) -> None:
    """Create ``path`` holding ``key_hex``, ``0600``, atomically; an existing file (another worker's) wins."""
    private_dir(path.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key_hex + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # fails if the file exists: never overwrite a key in use
    except FileExistsError:
        pass
    finally:
        temp.unlink()


def audit_key(settings: Settings, store: Store) -> bytes:
    """The patient-id hash key (see the module docstring); moves a key found in the database out of it."""
    legacy = store.legacy_hash_key()
    if settings.audit_hash_key is not None:
        key = settings.audit_hash_key.get_secret_value().encode("utf-8")
    else:
        path = key_path(settings)
        if not path.exists():
            write_key(path, legacy or secrets.token_hex(32))
        key = read_key(path)
    if legacy is not None:
        store.drop_legacy_hash_key()  # the key now lives apart from the data it protects
    return key
