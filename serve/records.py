"""Prediction records and their images in MongoDB, through pymongo only.

Images go to GridFS first, then the record that points at them, so no record ever names a
missing file. ``request_id`` is an idempotency key scoped to its caller (``created_by_key``): a
repeated or concurrent save of the same request returns the one stored record, and the loser of a
race removes the files it uploaded. The same key with another payload (another patient or image,
whose ``request_fingerprint`` differs) is refused as ``key_reused``, storing nothing; another
caller's key is another key. Writes
use write concern ``majority``. When the database cannot be reached, ``save`` says so
(``SaveResult.saved`` False with a reason); it never claims a save that did not happen. Files
that an interrupted save leaves behind are ``serve.orphans``' job.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import gridfs
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument, WriteConcern
from pymongo.errors import CollectionInvalid, DuplicateKeyError, PyMongoError, WriteError

PREDICTIONS = "predictions"
IMAGES = "images"  # the GridFS bucket: images.files and images.chunks
IMAGE_KINDS = ("original", "annotated", "gradcam")  # the pictures a client may ask for
# What a save stores: the upload as received, and with Grad-CAM the 8-bit heatmap. The annotated
# picture and the overlay are drawn from them on request (records before this stored them too,
# and those stored copies are still served as they are).
STORED_KINDS = ("original", "heatmap")


@dataclass(frozen=True)
class ViewSource:
    """What drawing one picture of a record needs: the stored picture itself, or what it is drawn from."""

    kind: str
    stored: bytes | None = None  # a picture kept as it is served (the original; older records' drawings)
    original: bytes | None = None
    heatmap: bytes | None = None
    top_label: str = ""
    confidence: float = 0.0
    synthetic_demo: bool = False


@dataclass(frozen=True)
class SaveResult:
    saved: bool
    prediction_id: str | None = None
    duplicate: bool = False  # the request id was stored before, for the same payload: this is that record
    reason: str | None = None  # why it was not saved
    key_reused: bool = False  # the caller's request id names an earlier save of another payload
    instance_conflict: bool = False  # the SOP Instance UID is stored for another patient or image


KEY_REUSED = SaveResult(False, reason="this request_id was used before for another patient or image", key_reused=True)
INSTANCE_CONFLICT = SaveResult(
    False, reason="this SOP Instance UID is stored for another patient or image", instance_conflict=True
)
SOP_INSTANCE_UID = "dicom.sop_instance_uid"
# Set on a record stored by STOW-RS, whose results no gateway has taken yet; False once one has.
RESULTS_DUE = "results_due"
LEASED_UNTIL = "results_leased_until"  # a claiming gateway's hold on those results


def request_fingerprint(patient_id: str, original: bytes) -> str:
    """What makes a retry the same request: the patient and the image's exact bytes."""
    return hashlib.sha256(patient_id.encode() + b"\0" + hashlib.sha256(original).digest()).hexdigest()


PREDICTION_SCHEMA = {
    "bsonType": "object",
    "required": ["_id", "request_id", "patient_id", "created_at", "files"],
    # Analysed: the model's answer is all there. Not analysed: no answer, and the reason why.
    "anyOf": [
        {"required": ["probabilities", "top_label", "confidence", "model"]},
        {"required": ["status", "not_analysed"], "properties": {"status": {"enum": ["not_analysed"]}}},
    ],
    "properties": {
        "status": {"enum": ["analysed", "not_analysed"]},
        "not_analysed": {"bsonType": "object", "required": ["code", "message"]},
        # A DICOM instance's identifiers, as its header states them (cxr_model.dicom.DicomIdentifiers).
        "dicom": {
            "bsonType": "object",
            "properties": {
                name: {"bsonType": "string", "maxLength": 64}
                for name in (
                    "study_instance_uid",
                    "series_instance_uid",
                    "sop_instance_uid",
                    "sop_class_uid",
                    "accession_number",
                    "modality",
                    "body_part_examined",
                    "view_position",
                )
            }
            | {"sending_application_entity_title": {"bsonType": "string", "maxLength": 16}},
        },
        "_id": {"bsonType": "string"},
        "request_id": {"bsonType": "string"},
        "created_by_key": {"bsonType": "string"},
        "request_fingerprint": {"bsonType": "string", "pattern": "^[0-9a-f]{64}$"},
        "patient_id": {"bsonType": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
        "created_at": {"bsonType": "date"},
        "probabilities": {"bsonType": "object"},
        "top_label": {"bsonType": "string"},
        "confidence": {"bsonType": "double", "minimum": 0, "maximum": 1},
        "positives": {"bsonType": "array"},
        "low_confidence": {"bsonType": "bool"},
        # Traceability: which weights, preprocessing, thresholds and calibration produced this record.
        "model": {
            "bsonType": "object",
            "required": [
                "name",
                "version",
                "weights_sha256",
                "preprocessing_version",
                "thresholds",
                "calibration_temperature",
                "code_version",
            ],
        },
        "files": {"bsonType": "object", "required": ["original"]},
        "deliveries": {"bsonType": "array", "items": {"bsonType": "object", "required": ["destination", "status"]}},
        # STOW-RS-received: the service owes the PACS this record's results until a gateway takes them.
        "results_due": {"bsonType": "bool"},
        "results_leased_until": {"bsonType": "date"},
    },
}


class PredictionRecords:
    """The predictions collection and its images in GridFS."""

    def __init__(self, uri: str, database: str, timeout_ms: int = 3000):
        self.client = MongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(timeout_ms * 3, 10000),
            tz_aware=True,
        )
        self.db = self.client.get_database(database, write_concern=WriteConcern(w="majority"))
        self.files = gridfs.GridFS(self.db, collection=IMAGES)
        self._schema_ready = False

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        try:
            self.db.create_collection(PREDICTIONS, validator={"$jsonSchema": PREDICTION_SCHEMA})
        except CollectionInvalid:
            self.db.command("collMod", PREDICTIONS, validator={"$jsonSchema": PREDICTION_SCHEMA})
        collection = self.db[PREDICTIONS]
        if "request_id_unique" in collection.index_information():  # before keys were scoped to their caller
            collection.drop_index("request_id_unique")
        collection.create_index(
            [("created_by_key", ASCENDING), ("request_id", ASCENDING)], unique=True, name="request_id_per_caller"
        )
        collection.create_index([("patient_id", ASCENDING), ("created_at", DESCENDING)], name="patient_recent")
        # One record per DICOM instance, whoever sends it (the gateway, STOW-RS, an upload): a PACS
        # resending an instance gets the record it has. Records without a SOP Instance UID are not indexed.
        collection.create_index(
            [(SOP_INSTANCE_UID, ASCENDING)],
            unique=True,
            partialFilterExpression={SOP_INSTANCE_UID: {"$exists": True}},
            name="sop_instance_unique",
        )
        collection.create_index([("dicom.study_instance_uid", ASCENDING)], name="study")
        collection.create_index([("dicom.accession_number", ASCENDING)], name="accession")
        collection.create_index(
            [(RESULTS_DUE, ASCENDING), ("created_at", ASCENDING)],
            partialFilterExpression={RESULTS_DUE: True},
            name="results_due",
        )
        self.db["images.files"].create_index([("uploadDate", ASCENDING)], name="upload_date")
        self._schema_ready = True

    def ping(self) -> bool:
        try:
            self.client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    def _existing(self, record: dict) -> SaveResult | None:
        """The earlier save of this caller's request id, or of this DICOM instance by anyone: the same
        payload (a retry, a resend) or a conflict (a reused key; another image under the same UID)."""
        collection = self.db[PREDICTIONS]
        existing = collection.find_one({"created_by_key": record["created_by_key"], "request_id": record["request_id"]})
        conflict = KEY_REUSED
        uid = record.get("dicom", {}).get("sop_instance_uid")
        if existing is None and uid is not None:
            existing, conflict = collection.find_one({SOP_INSTANCE_UID: uid}), INSTANCE_CONFLICT
        if existing is None:
            return None
        if existing.get("request_fingerprint") != record["request_fingerprint"]:
            return conflict
        return SaveResult(True, existing["_id"], duplicate=True)

    def save(self, record: dict, images: dict[str, bytes]) -> SaveResult:
        """Store images then the record; never claims a save that did not happen."""
        uploaded = []
        try:
            self.ensure_schema()
            existing = self._existing(record)
            if existing is not None:
                return existing
            prediction_id = uuid.uuid4().hex
            files = {}
            for kind, data in images.items():
                # The id is ours before the write starts: a put that fails after some chunks are
                # written (say, its file document is refused) is discarded whole, chunks included.
                file_id = ObjectId()
                uploaded.append(file_id)
                self.files.put(
                    data,
                    _id=file_id,
                    filename=f"{prediction_id}-{kind}",
                    metadata={"prediction_id": prediction_id, "kind": kind, "request_id": record["request_id"]},
                )
                files[kind] = file_id
            document = {**record, "_id": prediction_id, "files": files}
            try:
                self.db[PREDICTIONS].insert_one(document)
            except DuplicateKeyError:
                # A concurrent save of the same request won; keep its record, drop our files.
                self._discard(uploaded)
                return self._existing(record) or SaveResult(False, reason="a concurrent save failed")
            return SaveResult(True, prediction_id)
        except WriteError as exc:
            self._discard(uploaded)
            return SaveResult(False, reason=f"record rejected by the database schema (code {exc.code})")
        except PyMongoError as exc:
            self._discard(uploaded)
            return SaveResult(False, reason=f"database unavailable ({exc.__class__.__name__})")

    def _discard(self, file_ids) -> None:
        for file_id in file_ids:
            try:
                self.files.delete(file_id)
            except PyMongoError:
                pass  # left for the orphan sweep: files whose prediction_id has no record

    def get(self, prediction_id: str, owner: str | None = None) -> dict | None:
        """A record; with ``owner``, only if that caller saved it."""
        query = {"_id": prediction_id} | ({"created_by_key": owner} if owner is not None else {})
        return self.db[PREDICTIONS].find_one(query)

    def record_delivery(self, prediction_id: str, delivery: dict) -> bool:
        """One destination's latest delivery state replaces its earlier one (a list: destinations hold
        dots and colons, which field names cannot). ``queued`` never replaces a later state: the sender
        may deliver before the queuing gateway's report arrives. Results that were due are now a gateway's."""
        entry = delivery | {"at": now().isoformat()}
        collection = self.db[PREDICTIONS]
        destination = delivery["destination"]
        if collection.count_documents({"_id": prediction_id}, limit=1) == 0:
            return False
        if delivery["status"] == "queued":
            unnamed = {"_id": prediction_id, "deliveries.destination": {"$ne": destination}}
            collection.update_one(unnamed, {"$push": {"deliveries": entry}})
        else:
            collection.update_one({"_id": prediction_id}, {"$pull": {"deliveries": {"destination": destination}}})
            collection.update_one({"_id": prediction_id}, {"$push": {"deliveries": entry}})
        taken = {"$set": {RESULTS_DUE: False}, "$unset": {LEASED_UNTIL: ""}}
        collection.update_one({"_id": prediction_id, RESULTS_DUE: True}, taken)
        return True

    def claim_due(self, limit: int, lease_s: float, at: datetime | None = None) -> list[dict]:
        """Up to ``limit`` records whose results are due at the PACS, oldest first, each leased for
        ``lease_s``: gateways polling at once take different records, and the records of one that
        dies before it reports become claimable again when its lease runs out."""
        at = at or now()
        free = {RESULTS_DUE: True, "$or": [{LEASED_UNTIL: {"$exists": False}}, {LEASED_UNTIL: {"$lte": at}}]}
        claimed = []
        for _ in range(limit):
            record = self.db[PREDICTIONS].find_one_and_update(
                free,
                {"$set": {LEASED_UNTIL: at + timedelta(seconds=lease_s)}},
                sort=[("created_at", ASCENDING), ("_id", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if record is None:
                break
            claimed.append(record)
        return claimed

    def image(self, prediction_id: str, kind: str, record: dict | None = None) -> bytes | None:
        record = record or self.get(prediction_id)
        if record is None or kind not in record["files"] or record.get("status") == "not_analysed":
            return None
        return self.files.get(record["files"][kind]).read()

    def view_source(self, record: dict, kind: str, read: bool = True) -> ViewSource | None:
        """How to serve picture ``kind`` of a record; ``read=False`` only says whether it exists."""
        if record.get("status") == "not_analysed":
            return None  # kept as received, never drawn (it may not even decode)
        files = record["files"]
        if kind in files:
            return ViewSource(kind, self.files.get(files[kind]).read() if read else None)
        if kind == "gradcam" and "heatmap" not in files:
            return None  # no Grad-CAM was asked for
        if kind not in ("annotated", "gradcam"):
            return None
        return ViewSource(
            kind,
            original=self.files.get(files["original"]).read() if read else None,
            heatmap=self.files.get(files["heatmap"]).read() if read and kind == "gradcam" else None,
            top_label=record["top_label"],
            confidence=record["confidence"],
            synthetic_demo=bool(record["model"].get("synthetic_demo")),
        )

    def by_patient(
        self, patient_id: str, page: int = 1, page_size: int = 20, owner: str | None = None
    ) -> tuple[list[dict], int]:
        query = {"patient_id": patient_id} | ({"created_by_key": owner} if owner is not None else {})
        total = self.db[PREDICTIONS].count_documents(query)
        cursor = (
            self.db[PREDICTIONS]
            .find(query)
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .skip((page - 1) * page_size)
            .limit(page_size)
        )
        return list(cursor), total


def now() -> datetime:
    return datetime.now(timezone.utc)
