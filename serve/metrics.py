"""Every Prometheus metric the application exports, in one place, grouped by the deployment that
records it. Ray Serve's metric objects must be created inside a replica, so each group is a
class its deployment instantiates in ``__init__``; Ray adds the deployment/replica tags."""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


class IngressMetrics:
    def __init__(self):
        self.rejected = Counter(
            "cxr_rejected_inputs_total", description="uploads refused, by reason", tag_keys=("reason",)
        )
        self.predictions = Counter(
            "cxr_predictions_total", description="predictions served, by top label", tag_keys=("label", "model_version")
        )
        self.retries = Counter(
            "cxr_prediction_retries_total",
            description="predictions retried after a replica died under them",
            tag_keys=("reason",),
        )
        self.unavailable = Counter(
            "cxr_unavailable_total",
            description="predictions answered 503/504 (queue full or timeout)",
            tag_keys=("reason",),
        )
        self.out_of_scope = Counter(
            "cxr_out_of_scope_total",
            description="uploads refused as not a chest radiograph, by reason",
            tag_keys=("reason",),
        )
        self.stage_seconds = Histogram(
            "cxr_stage_seconds", description="time per request stage", boundaries=LATENCY_BUCKETS, tag_keys=("stage",)
        )


class ClassifierMetrics:
    def __init__(self):
        self.batch_sizes = Histogram(
            "cxr_batch_size", description="images per model forward pass", boundaries=[1, 2, 4, 8, 16, 32, 64]
        )
        self.inference_seconds = Histogram(
            "cxr_inference_seconds",
            description="model forward time per batch",
            boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
        )
        self.model_loaded = Gauge(
            "cxr_model_info", description="1 for the model version this replica serves", tag_keys=("model", "version")
        )
        self.rolls = Counter("cxr_model_rolls_total", description="checkpoints loaded via user_config")
        self.gate_rechecks = Counter(
            "cxr_gate_rechecks_total", description="int8 images near the out-of-scope gate's threshold re-run in fp32"
        )


class StoreMetrics:
    def __init__(self):
        self.failures = Counter(
            "cxr_storage_failures_total", description="saves that could not be stored", tag_keys=("operation",)
        )
        self.swept = Counter(
            "cxr_orphans_swept_total",
            description="image files and chunks left by interrupted saves, removed by the orphan sweep",
            tag_keys=("kind",),
        )


class ReviewMetrics:
    """The model's agreement with its radiologists (``serve.agreement``), refreshed by the ResultStore."""

    def __init__(self):
        self.reviewed = Gauge(
            "cxr_reviewed_records", description="records with a current review", tag_keys=("model_version",)
        )
        self.agreement = Gauge(
            "cxr_review_agreement_ratio",
            description="share of current reviews that agree with the model",
            tag_keys=("model_version",),
        )
        self.ppv = Gauge(
            "cxr_review_ppv_ratio",
            description="of the reviewed records the model called positive for a label, the share the radiologist did",
            tag_keys=("model_version", "label"),
        )
        self.sensitivity = Gauge(
            "cxr_review_sensitivity_ratio",
            description="of the reviewed records a radiologist found a label in, the share the model called",
            tag_keys=("model_version", "label"),
        )

    def show(self, models) -> None:
        for model in models:
            version = {"model_version": model.model_version}
            self.reviewed.set(model.reviewed, tags=version)
            self.agreement.set(model.agreement.value or 0.0, tags=version)
            for label in model.labels:
                tags = version | {"label": label.label}
                if label.ppv.n:
                    self.ppv.set(label.ppv.value, tags=tags)
                if label.sensitivity.n:
                    self.sensitivity.set(label.sensitivity.value, tags=tags)


class DriftMetrics:
    """Input drift against the model card's validation-split reference (``cxr_model.drift``), per classifier
    replica. No PSI series while the window is short or the checkpoint has no reference; the window size
    always, so a dashboard tells "no drift" from "not measured"."""

    def __init__(self):
        self.psi = Gauge(
            "cxr_drift_psi",
            description="population stability index of served images against the validation split, by feature",
            tag_keys=("feature", "model_version"),
        )
        self.window_size = Gauge(
            "cxr_drift_window_size",
            description="images in the drift window the PSI is computed over",
            tag_keys=("model_version",),
        )

    def show(self, version: str, window_size: int, psi: dict[str, float]) -> None:
        self.window_size.set(window_size, tags={"model_version": version})
        for feature, value in psi.items():
            self.psi.set(value, tags={"feature": feature, "model_version": version})
