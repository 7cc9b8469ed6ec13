"""The copy of a DICOM upload that is stored: de-identified per DICOM PS3.15 Annex E.

The Basic Application Level Confidentiality Profile, with the options the record needs:
- Retain Patient ID: the record is filed under it (it is the key clinicians search by);
- Retain UIDs Option: Study/Series/SOP Instance UIDs, so a result can be linked back to the PACS;
- Retain Device Identity and Safe Private are not taken: device names, serial numbers and every
  private element are removed.
Names, dates of birth, addresses, institutions, physicians, operators, accession numbers and free
text are removed (X) or emptied (Z, for Type 2 elements a reader expects). The pixels are kept as
they are: text burnt into the image is not removed (PS3.15's Clean Pixel Data Option), which the
record states (``BurnedInAnnotation`` is kept as the modality set it).
"""

from __future__ import annotations

import io

from cxr_model.dicom import PREAMBLE, is_dicom

METHOD = "CXR Serve: PS3.15 Basic Profile; Retain Patient ID, Retain UIDs"
# Emptied (Z): Type 2 in the CR/DX IODs, so the element stays, without a value.
EMPTIED = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "ContentDate",
    "ContentTime",
)
# Removed (X).
REMOVED = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "Occupation",
    "MilitaryRank",
    "BranchOfService",
    "MedicalRecordLocator",
    "PatientComments",
    "AdditionalPatientHistory",
    "PregnancyStatus",
    "PatientReligiousPreference",
    "CountryOfResidence",
    "RegionOfResidence",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "PlateID",
    "CassetteID",
    "DetectorID",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "RequestAttributesSequence",
    "ReferencedPatientSequence",
    "ReferencedStudySequence",
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
    "AdmittingDiagnosesDescription",
    "DerivationDescription",
    "RequestedProcedureDescription",
    "PerformedProcedureStepDescription",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "ScheduledProcedureStepDescription",
    "ProtocolName",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "SeriesDate",
    "SeriesTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "TextComments",
    "IssuerOfPatientID",
    "PatientInsurancePlanCodeSequence",
    "CurrentPatientLocation",
    "PatientState",
)


def deidentify(data: bytes) -> bytes:
    """A DICOM file -> the same image with the profile applied and a zeroed preamble; other bytes as they are."""
    if not is_dicom(data):
        return data
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.remove_private_tags()
    for element in list(ds):  # overlays (60xx) and curves (50xx) can hold burnt-in text or drawings
        if 0x5000 <= element.tag.group <= 0x60FF:
            del ds[element.tag]
    for keyword in REMOVED:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in EMPTIED:
        if keyword in ds:
            ds[keyword].value = ""
    ds.PatientIdentityRemoved = "NO"  # the Patient ID is retained on purpose
    ds.DeidentificationMethod = METHOD
    ds.preamble = bytes(PREAMBLE)  # free-form bytes that can carry another file format
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
