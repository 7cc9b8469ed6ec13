"""The embedded SecantusDB server: one per Ray cluster, persistent across restarts."""

from __future__ import annotations

import ray
from pymongo import MongoClient

from serve.embedded_db import embedded_mongodb
from tests.serve.conftest import free_port


def test_one_shared_persistent_server_per_cluster(ray_cluster, tmp_path):
    actor = embedded_mongodb(str(tmp_path / "data"), free_port())
    try:
        uri = ray.get(actor.uri.remote())
        # A second caller (another storage replica) gets the same server, whatever it asks for.
        again = embedded_mongodb(str(tmp_path / "elsewhere"), free_port())
        assert ray.get(again.uri.remote()) == uri
        MongoClient(uri)["cxr"]["probe"].insert_one({"_id": "kept"})
        ray.get(actor.stop.remote())
        assert ray.get(actor.start.remote()) == uri
        assert MongoClient(uri)["cxr"]["probe"].find_one({"_id": "kept"}) is not None
        assert (tmp_path / "data" / "db").is_dir()
    finally:
        ray.get(actor.stop.remote())
        ray.kill(actor)
