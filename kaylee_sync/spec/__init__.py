"""The unit spec: model, codec (Go-compatible JSON and hash); loading and validation."""

from kaylee_sync.spec.codec import (
    go_json_bytes,
    spec_from_dict,
    spec_hash,
    spec_hash6,
    spec_to_dict,
    to_json,
)
from kaylee_sync.spec.loader import load_unit, parse_stored
from kaylee_sync.spec.model import App, EnvVar, UnitSpec, Volume
from kaylee_sync.spec.schema import unit_schema
from kaylee_sync.spec.validate import validate_spec

__all__ = [
    "App",
    "EnvVar",
    "UnitSpec",
    "Volume",
    "go_json_bytes",
    "load_unit",
    "parse_stored",
    "spec_from_dict",
    "spec_hash",
    "spec_hash6",
    "spec_to_dict",
    "to_json",
    "unit_schema",
    "validate_spec",
]
