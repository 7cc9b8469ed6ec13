"""``cxr keys`` and ``cxr audit``: the administrator's commands, straight to MongoDB (no Ray).

They read the same ``CXR_*`` settings as the service: ``CXR_MONGODB_URI`` (default: the embedded
server that ``scripts/run.sh`` starts on 127.0.0.1:``CXR_EMBEDDED_DB_PORT``) and ``CXR_MONGODB_DATABASE``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from pymongo import MongoClient

from serve.api_keys import ApiKeys
from serve.audit import ACTIONS, AuditLog
from serve.identity import ROLES
from serve.settings import ServeSettings


def _database(settings: ServeSettings):
    uri = settings.mongodb_uri or f"mongodb://127.0.0.1:{settings.embedded_db_port}/"
    client = MongoClient(uri, serverSelectionTimeoutMS=settings.mongodb_timeout_ms, tz_aware=True)
    return client[settings.mongodb_database]


def register_keys(subparsers) -> None:
    parser = subparsers.add_parser("keys", help="create, list and revoke API keys")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key, printed once")
    create.add_argument("--name", required=True, help="who or what uses it, recorded in the audit log (required)")
    create.add_argument("--role", choices=ROLES, default="clinician", help="what the key may do (default: %(default)s)")
    create.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        help="requests per minute for this key (default: the service's CXR_RATE_LIMIT_PER_MINUTE)",
    )
    revoke = actions.add_parser("revoke", help="revoke a key by its id (its sessions end within 30 s)")
    revoke.add_argument("key_id", help="the key's id, as cxr keys list shows it")
    actions.add_parser("list", help="every key: id, name, role, created, revoked")
    parser.set_defaults(func=_keys)


def _keys(args) -> int:
    keys = ApiKeys(_database(ServeSettings()))
    if args.action == "create":
        key_id, token = keys.create(args.name, args.role, args.rate_limit)
        print(f"key id: {key_id}\nAPI key (shown once, store it now): {token}")
    elif args.action == "revoke":
        if not keys.revoke(args.key_id):
            print(f"no active key {args.key_id}")
            return 1
        print(f"revoked {args.key_id}")
    else:
        for key in keys.list():
            revoked = key["revoked_at"].isoformat(timespec="seconds") if key.get("revoked_at") else "-"
            print(
                f"{key['_id']}  {key['role']:<9}  created {key['created_at'].isoformat(timespec='seconds')}  "
                f"revoked {revoked}  {key['name']}"
            )
    return 0


def register_audit(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help="who created, viewed or exported which prediction (newest first), or verify the log's chain"
    )
    parser.add_argument(
        "check",
        nargs="?",
        choices=("verify",),
        help="verify: walk the hash chain and report deleted, altered or reordered entries (exit 1) "
        "(default: list entries)",
    )
    parser.add_argument("--patient-id", help="only this patient's entries (default: every patient)")
    parser.add_argument("--actor", help="only this key name or SSO user (default: anyone)")
    parser.add_argument("--prediction-id", help="only this prediction's entries (default: every prediction)")
    parser.add_argument("--action", choices=ACTIONS, help="only this action (default: every action)")
    parser.add_argument("--days", type=float, help="only the last N days (default: all time)")
    parser.add_argument("--limit", type=int, default=100, help="at most this many entries (default: %(default)s)")
    parser.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="aligned text or one JSON object per line (default: %(default)s)",
    )
    parser.set_defaults(func=_audit)


def _verify(audit: AuditLog) -> int:
    check = audit.verify()
    for problem in check.problems:
        print(f"TAMPERED: {problem}")
    state = "intact" if check.intact else f"BROKEN ({len(check.problems)} problems)"
    print(f"audit chain {state}: {check.entries} entries, head {check.head}")
    print("Keep the head hash elsewhere: a later run that no longer reaches it shows a cut-off tail.")
    return 0 if check.intact else 1


def _audit(args) -> int:
    if args.check == "verify":
        return _verify(AuditLog(_database(ServeSettings())))
    since = datetime.now(timezone.utc) - timedelta(days=args.days) if args.days else None
    entries = AuditLog(_database(ServeSettings())).query(
        patient_id=args.patient_id,
        actor=args.actor,
        prediction_id=args.prediction_id,
        action=args.action,
        since=since,
        limit=args.limit,
    )
    for entry in entries:
        if args.format == "jsonl":
            print(json.dumps(entry, default=str))
        else:
            print(
                f"{entry['at'].isoformat(timespec='seconds')}  {entry['action']:<6}  {entry['actor']}  "
                f"prediction {entry.get('prediction_id') or '-'}  patient {entry.get('patient_id') or '-'}"
                + (f"  ({entry['detail']})" if entry.get("detail") else "")
            )
    return 0
