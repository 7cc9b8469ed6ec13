"""The gateway's Storage SCP against DCMTK's echoscu/storescu, as a modality or PACS would call it."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from gateway.scp import build_ae, start_scp
from gateway.spool import Spool
from tests.helpers import free_port, make_dicom
from training.synthetic import render_chest

ALLOWED = "PACS_MAIN"


@pytest.fixture
def dcmtk():
    if not shutil.which("storescu"):
        from tests.helpers import skip_or_fail_in_ci

        skip_or_fail_in_ci("DCMTK is not installed (apt-get install dcmtk)")


@pytest.fixture
def gateway(tmp_path, dcmtk):
    spool = Spool(tmp_path / "spool", max_bytes=10 * 1024**2)
    port = free_port()
    server = start_scp(build_ae("CXR_GATEWAY", [ALLOWED]), "127.0.0.1", port, spool)
    yield spool, port
    server.shutdown()


def dx_file(tmp_path, name: str, seed: int = 0, size: int = 256) -> tuple:
    pixels = (render_chest("Normal", np.random.default_rng(seed), size=size) * 4095).astype(np.uint16)
    path = tmp_path / name
    path.write_bytes(make_dicom(pixels, 12, patient_id=f"GW-{seed}"))
    return path, pydicom.dcmread(path)


def dcmtk_call(tool: str, port: int, *args, calling: str = ALLOWED) -> subprocess.CompletedProcess:
    command = [tool, "-aet", calling, "-aec", "CXR_GATEWAY", "127.0.0.1", str(port), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1"})


def test_echo_from_an_allowed_ae_and_refusal_of_any_other(gateway):
    _, port = gateway
    assert dcmtk_call("echoscu", port).returncode == 0
    refused = dcmtk_call("echoscu", port, calling="STRANGER")
    assert refused.returncode != 0 and "Association Rejected" in refused.stderr + refused.stdout


def test_a_stored_instance_is_on_disk_before_success_and_resending_keeps_one_copy(gateway, tmp_path):
    spool, port = gateway
    path, sent = dx_file(tmp_path, "dx.dcm")
    result = dcmtk_call("storescu", port, str(path))
    assert result.returncode == 0, result.stderr
    (stored,) = spool.waiting()  # answered success only after this file was renamed into place
    assert stored.name == f"{sent.SOPInstanceUID}.dcm"
    received = pydicom.dcmread(stored)
    assert received.PatientID == "GW-0" and received.pixel_array.tobytes() == sent.pixel_array.tobytes()
    # Who sent it, and to whom, in the File Meta Information (PS3.10), for the record and the worklist.
    assert received.file_meta.SendingApplicationEntityTitle == ALLOWED
    assert received.file_meta.ReceivingApplicationEntityTitle == "CXR_GATEWAY"
    assert dcmtk_call("storescu", port, str(path)).returncode == 0
    assert len(spool.waiting()) == 1 and not list(spool.incoming.iterdir())
    from_stranger = dcmtk_call("storescu", port, str(dx_file(tmp_path, "other.dcm", seed=1)[0]), calling="STRANGER")
    assert from_stranger.returncode != 0 and len(spool.waiting()) == 1


def test_a_full_spool_answers_out_of_resources_and_loses_nothing(tmp_path, dcmtk):
    first, _ = dx_file(tmp_path, "first.dcm", seed=2)
    spool = Spool(tmp_path / "spool", max_bytes=first.stat().st_size + 4096)  # room for one instance
    port = free_port()
    server = start_scp(build_ae("CXR_GATEWAY", [ALLOWED]), "127.0.0.1", port, spool)
    try:
        assert dcmtk_call("storescu", port, str(first)).returncode == 0
        second, sent = dx_file(tmp_path, "second.dcm", seed=3)
        full = dcmtk_call("storescu", port, "-v", str(second))
        assert "Received Store Response (Refused: OutOfResources)" in full.stderr  # DIMSE status 0xA700
        assert len(spool.waiting()) == 1  # refused, so the sender still holds it: nothing half-stored
        spool.answered(spool.waiting()[0])  # the forwarder delivered the first: room again
        assert dcmtk_call("storescu", port, str(second)).returncode == 0
        assert [p.name for p in spool.waiting()] == [f"{sent.SOPInstanceUID}.dcm"]
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "syntax",
    [
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless: no decoder installed
        "1.2.840.10008.1.2.4.100",  # MPEG2 video
    ],
)
def test_an_instance_in_a_syntax_the_decoder_lacks_is_refused_at_negotiation_and_never_spooled(
    gateway, tmp_path, syntax
):
    spool, port = gateway
    pixels = (render_chest("Normal", np.random.default_rng(5), size=64) * 4095).astype(np.uint16)
    path = tmp_path / "htj2k.dcm"
    path.write_bytes(make_dicom(pixels, 12, patient_id="GW-5", syntax=syntax))
    refused = dcmtk_call("storescu", port, "-v", str(path))
    # No presentation context accepts it, so no C-STORE can succeed: the sender keeps the instance.
    assert refused.returncode != 0 and "Store SCU Failed" in refused.stderr
    assert "Received Store Response (Success)" not in refused.stderr
    assert spool.waiting() == [] and not list(spool.incoming.iterdir())


def test_the_scp_rejects_the_presentation_context_of_an_undecodable_syntax(gateway):
    from pynetdicom import AE
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification

    _, port = gateway
    modality = AE(ae_title=ALLOWED)
    modality.add_requested_context(Verification)
    modality.add_requested_context(DigitalXRayImageStorageForPresentation, ["1.2.840.10008.1.2.4.201"])
    assoc = modality.associate("127.0.0.1", port, ae_title="CXR_GATEWAY")
    try:
        assert assoc.is_established
        (rejected,) = assoc.rejected_contexts
        assert rejected.abstract_syntax == DigitalXRayImageStorageForPresentation
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
    finally:
        assoc.release()
