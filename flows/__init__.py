"""Prefect flows and deployments that wire the library stages together.

Importing this package sets the project's Prefect defaults (see
``flows.settings``) before Prefect itself is imported."""
from flows.settings import apply_defaults as _apply_defaults

_apply_defaults()
