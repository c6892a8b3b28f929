"""API keys: created, listed, revoked and looked up by their hash. A key is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import ApiKey, utcnow

KEY_PREFIX = "rlp_"


def hash_key(key: str) -> str:
    """Keys are long random strings, so one unsalted SHA-256 is enough to make a stolen table useless."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, name: str, tenant: str) -> tuple[str, str]:
    """Store a new key's hash; returns (key id, key). The key itself is never seen again."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, tenant=tenant, key_hash=hash_key(key))
    session.add(row)
    session.flush()
    return row.id, key


def revoke_api_keys(session: Session, *, key_id: str | None = None, name: str | None = None,
                    tenant: str | None = None) -> int:
    """Revoke the live keys matching every given filter (at least one); returns how many."""
    conditions = [ApiKey.revoked_at.is_(None)]
    for column, value in ((ApiKey.id, key_id), (ApiKey.name, name), (ApiKey.tenant, tenant)):
        if value is not None:
            conditions.append(column == value)
    if len(conditions) == 1:
        raise ValueError("name a key by id, name or tenant")
    return session.execute(update(ApiKey).where(*conditions).values(revoked_at=utcnow())).rowcount


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)))


def tenant_for_key(session: Session, key: str) -> str | None:
    return session.scalar(select(ApiKey.tenant).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))


def key_standing(session: Session, key: str) -> tuple[str | None, bool]:
    """(the key's tenant while it is live, whether it was revoked): a caller with a revoked key is told so,
    which needs the whole key to learn and so tells no one else anything."""
    row = session.execute(select(ApiKey.tenant, ApiKey.revoked_at).where(ApiKey.key_hash == hash_key(key))).first()
    if row is None:
        return None, False
    return (None, True) if row.revoked_at is not None else (row.tenant, False)
