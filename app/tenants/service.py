"""API keys: random 256-bit secrets shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.tables import ApiKey, Tenant, utcnow

KEY_PREFIX = "ftaas-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> tuple[Tenant, str]:
    """Create the tenant if new, add a key to it, commit, and return the key in clear (only this once)."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 6]))
    session.commit()
    return tenant, key


def revoke_key(session: Session, key_or_prefix: str) -> int:
    """Revoke by full key or by its displayed prefix; returns how many keys were revoked."""
    if key_or_prefix.startswith(KEY_PREFIX) and len(key_or_prefix) > 20:
        keys = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key_or_prefix))).all()
    else:
        keys = session.scalars(select(ApiKey).where(ApiKey.prefix == key_or_prefix)).all()
    for k in keys:
        k.revoked_at = k.revoked_at or utcnow()
    session.commit()
    return len(keys)


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    row = session.execute(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    return row
