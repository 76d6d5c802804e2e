"""Checks on what the configuration takes from outside (issue 19 §3): credentials, the files
that hold them, the URLs credentials travel to, and the database URL.

Every message names where a value came from (the channel, the variable, the file), never the
value: a refused key or password must not reach the terminal or a log.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from outbox.errors import ConfigError

# The opt-out of the https rule, for test rigs whose fake API is not on loopback.
ALLOW_INSECURE_HTTP_ENV = "OUTBOX_ALLOW_INSECURE_HTTP"


# --- credentials ---------------------------------------------------------------------------


def credential_problem(value: str) -> str | None:
    """Why `value` cannot be a credential, or None. It goes into an HTTP header: a control
    character there makes the client raise on every request, and whitespace around it (the
    newline of `echo KEY > file`, of a Kubernetes Secret made `--from-file`) makes every request
    fail authentication while the key itself is right."""
    if value != value.strip():
        return "begins or ends with whitespace (a trailing newline?)"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return "contains a control character"
    return None


def checked_credential(value: str, where: str) -> str:
    """`value` if it can be a credential; otherwise a ConfigError naming `where`, not the value."""
    problem = credential_problem(value)
    if problem is not None:
        raise ConfigError(f"{where} {problem}: refused")
    return value


def read_secret_file(path: Path, where: str) -> str:
    """A credential file's content: its one final line ending taken off (files end in one), the
    rest checked as a credential. A file others can read is warned about, once per read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    warn_if_exposed(path)
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigError(f"{where} is empty")
    return checked_credential(text, where)


def warn_if_exposed(path: Path) -> None:
    """One WARNING naming the file (not its content) if the world can read it, or a group
    other than the daemon's own: libpq refuses such a `.pgpass`. A group-readable file of the
    daemon's own primary group is what a Kubernetes Secret volume with `fsGroup` and a systemd
    `Group=` give, and is not warned about."""
    try:
        info = path.stat()
    except OSError:
        return  # the read that follows reports it
    mode = stat.S_IMODE(info.st_mode)
    others = bool(mode & stat.S_IROTH)
    foreign_group = bool(mode & stat.S_IRGRP) and info.st_gid != os.getegid()
    if others or foreign_group:
        # A fresh logger: settings are loaded before and after logging is configured.
        structlog.get_logger("outbox.config").warning(
            "outbox.config.secret_file_readable",
            file=str(path),
            mode=f"{mode:04o}",
            hint="chmod 600 (or 640 with the daemon's own group)",
        )


# --- where credentials go ------------------------------------------------------------------


def insecure_http_allowed(env: Mapping[str, str]) -> bool:
    return env.get(ALLOW_INSECURE_HTTP_ENV, "").strip().lower() in ("1", "true", "yes")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_https(url: str, where: str, *, allow_insecure: bool) -> None:
    """An `http://` URL is refused unless it is on loopback (the sandbox, the demo) or the
    operator opted out: a key or a Basic-auth header must not cross a network in clear text."""
    parts = urlsplit(url)
    if parts.scheme == "https" or allow_insecure:
        return
    if parts.scheme == "http" and is_loopback(parts.hostname or ""):
        return
    raise ConfigError(
        f"{where} must be an https URL ({url!r} is not, and not on loopback); a test rig may"
        f" set {ALLOW_INSECURE_HTTP_ENV}=1"
    )


# --- the database URL ----------------------------------------------------------------------


def masked_database_url(url: str) -> str:
    """`url` with everything between the user name and the last `@` replaced by `***`: with an
    unencoded `/`, `#`, `?` or `@` in the password no parser finds the password's end, but the
    last `@` before the host is where it ends in every URL a person writes."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, tail = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if "/" in user or "?" in user or "#" in user:
        user = user.split("/")[0].split("?")[0].split("#")[0]
    return f"{scheme}://{user}{':***' if colon or user != userinfo else ''}@{tail}"


def check_database_url(url: str, key: str) -> None:
    """Refuse a URL whose password holds characters that must be percent-encoded, before any
    driver parses it: asyncpg's parser would raise with part of the password in its message."""
    parts = urlsplit(url)
    problem = None
    # (A query may hold an '@', e.g. `?user=me&password=p@ss`; a '?' in the password is caught
    # by the port check, the password's start being read as the port.)
    if "@" in parts.path or "@" in parts.fragment:
        problem = "an '@' after the host part"
    elif parts.netloc.count("@") > 1:
        problem = "more than one '@'"
    else:
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError:
            problem = "a port that is not a number"
    if problem is not None:
        raise ConfigError(
            f"{key} cannot be parsed ({problem}): a password with '/', '@', '#' or '?' in it"
            f" must be percent-encoded (e.g. '/' as %2F, '@' as %40); got"
            f" {masked_database_url(url)}"
        )


def database_url_from_file(path: Any, given: Any) -> str:
    """`database_url_file`: the URL from a file (a mounted Secret), never the environment."""
    if given:
        raise ConfigError("give database_url or database_url_file, not both")
    if not isinstance(path, str) or not path:
        raise ConfigError("database_url_file must name a file")
    try:
        return read_secret_file(Path(path), f"database_url_file {path}")
    except OSError as exc:
        raise ConfigError(f"cannot read database_url_file {path}: {exc.strerror}") from exc
