"""The files a config names (keys, CA, certificates, secrets), and whether the service's user can read each."""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from gate.config.model import Config, secret_path
from gate.core.errors import ConfigError

SERVICE_USER = "gate"  # systemd/gate.service's User=


@dataclass(frozen=True)
class NamedFile:
    """`key` is where the config names it; a `credential` (a relative secret) is read by systemd as root and
    handed to the service in $CREDENTIALS_DIRECTORY, so it need not be readable by the service's user."""

    key: str
    path: Path
    credential: bool = False


def named_files(cfg: Config) -> list[NamedFile]:
    """Every file the gate opens because the config names it."""
    out = [NamedFile(f"trust.keys[{i}]", p) for i, p in enumerate(cfg.trust.keys)]
    out += [NamedFile(f"central.keys[{i}]", p) for i, p in enumerate(cfg.central.keys)]
    secrets = [("gate.device_key", cfg.gate.device_key), ("mqtt.password_file", cfg.mqtt.password_file)]
    tls = cfg.mqtt.tls
    if tls is not None:
        out += [NamedFile(f"mqtt.tls.{k}", p) for k, p in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file)) if p]
        secrets.append(("mqtt.tls.key_file", tls.key_file))
    out += [NamedFile(k, secret_path(p), not p.is_absolute()) for k, p in secrets if p is not None]
    return out


@dataclass(frozen=True)
class Reader:
    """Who must be able to read the files: a user id and its groups."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def service(cls, user: str = SERVICE_USER) -> Reader:
        """As root: the service's user if it exists (what it will be able to read); otherwise whoever runs this."""
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                pass
            else:
                return cls(user, pw.pw_uid, frozenset(os.getgrouplist(user, pw.pw_gid)))
        return cls.current()

    @classmethod
    def current(cls) -> Reader:
        me = pwd.getpwuid(os.geteuid()).pw_name if _known(os.geteuid()) else str(os.geteuid())
        return cls(me, os.geteuid(), frozenset({os.getegid(), *os.getgroups()}))

    def may(self, st: os.stat_result, bits: int) -> bool:
        """The owner, group or other permission bits that apply to this user (`bits`: 4 read, 1 search)."""
        if self.uid == 0:
            return True
        shift = 6 if st.st_uid == self.uid else 3 if st.st_gid in self.gids else 0
        return bool((st.st_mode >> shift) & bits)


def _known(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def cannot_read(f: NamedFile, reader: Reader) -> str | None:
    """Why `reader` cannot read the file, in a few words, or None. A credential is checked for this process."""
    try:
        st = f.path.stat()
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a file"
    who = reader if not f.credential else Reader.current()
    if who.uid == os.geteuid():  # this process: ask the kernel (ACLs, capabilities and all)
        return None if os.access(f.path, os.R_OK) else f"not readable by user {who.name}"
    for parent in f.path.absolute().parents:
        try:
            pst = parent.stat()
        except OSError:
            continue
        if not who.may(pst, 1):
            return f"user {who.name} cannot enter {parent} (mode {stat.S_IMODE(pst.st_mode):04o})"
    if not who.may(st, 4):
        owner = pwd.getpwuid(st.st_uid).pw_name if _known(st.st_uid) else str(st.st_uid)
        return f"not readable by user {who.name} (mode {stat.S_IMODE(st.st_mode):04o}, owner {owner})"
    return None


def unreadable(cfg: Config, reader: Reader | None = None) -> list[str]:
    """One line per named file the service cannot read: `key path: why`."""
    who = reader or Reader.service()
    return [f"{f.key} {f.path}: {why}" for f in named_files(cfg) if (why := cannot_read(f, who)) is not None]


def require_readable(cfg: Config) -> None:
    """Before the daemon opens anything: a file it would fail on is named, not blamed on the state directory."""
    problems = unreadable(cfg, Reader.current())  # the daemon runs as itself: what it can read now
    if problems:
        raise ConfigError("cannot read a file the config names:\n  " + "\n  ".join(problems))
