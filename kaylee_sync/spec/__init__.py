"""The unit spec: model, codec (Go-compatible JSON and hash); loading and validation."""

from kaylee_sync.spec.codec import (
    go_json_bytes,
    spec_from_dict,
    spec_hash,
    spec_hash6,
    spec_to_dict,
    to_json,
)
from kaylee_sync.spec.loader import (
    load_unit,
    load_unit_and_policy,
    parse_stored,
    parse_stored_policy,
)
from kaylee_sync.spec.model import App, EnvVar, UnitSpec, Volume
from kaylee_sync.spec.policy import (
    DEFAULT_POLICY,
    HealthPolicy,
    HttpCheck,
    RolloutPolicy,
    UnitPolicy,
    policy_to_json,
)
from kaylee_sync.spec.schema import unit_schema
from kaylee_sync.spec.validate import validate_spec

__all__ = [
    "DEFAULT_POLICY",
    "App",
    "EnvVar",
    "HealthPolicy",
    "HttpCheck",
    "RolloutPolicy",
    "UnitPolicy",
    "UnitSpec",
    "Volume",
    "go_json_bytes",
    "load_unit",
    "load_unit_and_policy",
    "parse_stored",
    "parse_stored_policy",
    "policy_to_json",
    "spec_from_dict",
    "spec_hash",
    "spec_hash6",
    "spec_to_dict",
    "to_json",
    "unit_schema",
    "validate_spec",
]
