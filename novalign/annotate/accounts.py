"""Accounts, passwords and sessions of the annotation app.

Passwords are hashed with Argon2id (``argon2-cffi``'s defaults, RFC 9106). A session is a random 256-bit cookie
value; the database keeps only its sha256 and a per-session CSRF token that every state-changing request must
echo (form field ``csrf_token`` or header ``X-CSRF-Token``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session as DBSession

from novalign.annotate.models import ROLES, Session, User, utcnow

def _hasher() -> PasswordHasher:
    """argon2-cffi's default parameters (RFC 9106 low-memory profile); NOVALIGN_ARGON2_PROFILE names another of
    ``argon2.profiles`` -- the test suite sets CHEAPEST so that a login does not cost a second on a shared CI box.
    A hash records its own parameters, so hashes made under one profile verify under any."""
    name = os.environ.get("NOVALIGN_ARGON2_PROFILE")
    if not name:
        return PasswordHasher()
    profile = getattr(profiles, name, None)
    if profile is None:
        raise ValueError(f"NOVALIGN_ARGON2_PROFILE={name!r} is not a profile of argon2.profiles")
    return PasswordHasher.from_parameters(profile)


_HASHER = _hasher()
SESSION_DAYS = 7
_USERNAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,80}$")  # ":" for imported accounts (ls:<name>)
# a hash of a random password: verifying against it when the user does not exist keeps login time the same
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


class AccountError(ValueError):
    pass


def parse_skills(text: str | list[str] | None) -> list[str]:
    """``"Math, Code"`` -> ``["Math", "Code"]`` (order kept, blanks and repeats dropped)."""
    items = text if isinstance(text, list) else (text or "").split(",")
    out: list[str] = []
    for item in (i.strip() for i in items):
        if item and item not in out:
            out.append(item)
    return out


def create_user(db: DBSession, username: str, password: str | None, role: str, skills: list[str] | None = None
                ) -> User:
    if not _USERNAME.match(username or ""):
        raise AccountError(f"username {username!r}: use 1-80 letters, digits or _ . @ : -")
    if role not in ROLES:
        raise AccountError(f"role {role!r}: must be one of {', '.join(ROLES)}")
    if password is not None and len(password) < 8:
        raise AccountError("password: at least 8 characters")
    if db.scalar(select(User).where(User.username == username)) is not None:
        raise AccountError(f"username {username!r} is taken")
    user = User(username=username, password_hash=None if password is None else _HASHER.hash(password), role=role,
                skills=list(skills or []))
    db.add(user)
    db.flush()
    return user


def authenticate(db: DBSession, username: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.username == username))
    db.commit()  # end the read before the slow hash check: on SQLite an open transaction holds the write lock
    stored = user.password_hash if user is not None and user.active and user.password_hash else _DUMMY_HASH
    try:
        _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    return user if stored is not _DUMMY_HASH else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(db: DBSession, user: User) -> tuple[str, Session]:
    """A new session for ``user``; returns the cookie value (shown once) and the row."""
    token = secrets.token_urlsafe(32)
    row = Session(token_hash=_digest(token), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                  expires_at=utcnow() + dt.timedelta(days=SESSION_DAYS))
    db.add(row)
    db.flush()
    return token, row


@dataclasses.dataclass(frozen=True)
class LoggedIn:
    """The user of a live session, as the plain values every request needs (routes, templates and routing read
    ``id``, ``username``, ``role`` and ``skills`` of it as of an ORM ``User``), and the session's CSRF token."""

    id: int
    username: str
    role: str
    skills: list[str]
    csrf_token: str


_U, _S = User.__table__.c, Session.__table__.c
# built once (every request runs it): see routing's note on reused statements
_SESSION = (select(_U.id, _U.username, _U.role, _U.skills, _S.csrf_token).join(User.__table__, _U.id == _S.user_id)
            .where(_S.token_hash == bindparam("digest"), _S.expires_at >= bindparam("now"), _U.active.is_(True)))


def session_of(db: DBSession, token: str | None) -> LoggedIn | None:
    """The user of the session whose cookie value is ``token``; None when there is no such session, it has
    expired, or its user is deactivated. One indexed read."""
    if not token:
        return None
    row = db.execute(_SESSION, {"digest": _digest(token), "now": utcnow()}).first()
    return None if row is None else LoggedIn(row.id, row.username, row.role, list(row.skills or []), row.csrf_token)


def close_session(db: DBSession, token: str | None) -> None:
    if token:
        db.execute(delete(Session).where(Session.token_hash == _digest(token)))


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())
