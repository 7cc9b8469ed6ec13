"""Clinician pages: Jinja2 templates, vendored static files, view helpers (no Ray)."""
