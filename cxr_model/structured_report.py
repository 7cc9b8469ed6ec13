"""A DICOM Comprehensive SR (TID 1500 Measurement Report) for one analysed radiograph, with highdicom.

What a PACS viewer shows as the AI result, in the same study as the image it is about:

- one measurement group per label, each referencing the source image (SOP Class and Instance),
  with the label's probability as a measurement and, for the labels the model calls positive, a
  qualitative evaluation "Present";
- the algorithm identified per IHE AI Results (TID 4019: name, version, and the weights' sha256 as
  a parameter), and the model as the observing device;
- VerificationFlag UNVERIFIED (no person has confirmed it), and "not for diagnostic use" in the
  series description, which viewers list beside the study.

The labels and the probability concept use the private coding scheme ``99CXR`` rather than guessed
SNOMED or LOINC codes: a wrong standard code would be read as a diagnosis it is not.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

SCHEME = "99CXR"  # private coding scheme: CXR Serve's own concepts
PROBABILITY = Code("probability", SCHEME, "Probability")
CHEST_RADIOGRAPH = Code("cxr-triage", SCHEME, "Chest radiograph AI triage")
PRESENT = Code("52101004", "SCT", "Present")
UNITLESS = Code("1", "UCUM", "no units")
SERIES_DESCRIPTION = "CXR AI triage - decision support, not for diagnostic use"
SERIES_NUMBER = 990  # AI result series sort after the acquired ones


def result_uid(source: Dataset, model: dict, *what: str) -> str:
    """A UID fixed by the source instance, the weights and what it names: the same result sent
    twice (a resend, a second path back to the PACS) is the same DICOM object, which a PACS keeps
    once; another model's result is another object."""
    return generate_uid(entropy_srcs=[str(source.SOPInstanceUID), model["weights_sha256"], *what])


def label_code(label: str) -> Code:
    return Code(label.upper().replace(" ", "_")[:16], SCHEME, label)


def _group(source: Dataset, label: str, probability: float, positive: bool, algorithm, model: dict) -> object:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid(source, model, "finding", label), identifier=label),
        finding_type=label_code(label),
        algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=PROBABILITY, value=round(float(probability), 6), unit=UNITLESS)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=label_code(label), value=PRESENT)]
        if positive
        else None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def build_report(source: Dataset, probabilities: dict[str, float], positives: list[str], model: dict) -> Dataset:
    """The SR for ``source`` (the received instance); ``model``: name, version, weights_sha256."""
    algorithm = hd.sr.AlgorithmIdentification(
        name=model["name"], version=model["version"], parameters=[f"weights sha256 {model['weights_sha256']}"]
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[model["weights_sha256"], "device"]),
            name=model["name"],
            model_name=model["version"],
            manufacturer_name="CXR Serve",
        ),
    )
    groups = [_group(source, label, p, label in positives, algorithm, model) for label, p in probabilities.items()]
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=CHEST_RADIOGRAPH,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    report = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=content[0],
        series_instance_uid=result_uid(source, model, "sr", "series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=result_uid(source, model, "sr", "instance"),
        instance_number=1,
        manufacturer="CXR Serve",
        is_complete=True,
        is_final=False,
        is_verified=False,  # VerificationFlag UNVERIFIED: an algorithm's output, not a signed report
        series_description=SERIES_DESCRIPTION,
    )
    # The private scheme is declared in the object, so a reader can tell whose concepts these are.
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "CXR Serve concepts"
    scheme.CodingSchemeResponsibleOrganization = "CXR Serve"
    report.CodingSchemeIdentificationSequence = [scheme]
    return report
