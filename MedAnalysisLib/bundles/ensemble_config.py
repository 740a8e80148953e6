"""What ``ensemble.json`` holds, validated on construction (:class:`EnsembleConfig`).

Apart from :mod:`MedAnalysisLib.bundles.ensemble` (which loads and writes ensembles) so that the bundle storage
layer can recognise an earlier ensemble without importing the loader that builds on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from MedAnalysisLib.bundles.card import check_card, default_card
from MedAnalysisLib.bundles.config import (
    INFERENCE_DEFAULTS,
    SHA256_RE,
    check_inference,
    check_json_safe,
    check_keys,
    check_schema_version,
    expect,
    parse_json,
)

ENSEMBLE_FILE = "ensemble.json"
#: Version of the ``ensemble.json`` schema this code writes (2: with the model card); 1 is read too (default card).
ENSEMBLE_SCHEMA_VERSION = 2
#: How member probabilities are combined (the only rule so far: the arithmetic mean).
COMBINE_RULES = ("mean",)
MIN_MEMBERS, MAX_MEMBERS = 2, 16
_MEMBER_FOLDER_RE = re.compile(r"^member-[0-9]{1,2}$")


@dataclass(frozen=True)
class EnsembleConfig:
    """Everything in ``ensemble.json``; validated on construction.

    Attributes:
        name: Short name shown to users.
        members: One ``{"folder": "member-N", "weights_sha256": hex}`` per member, in order.
        inference: Defaults for prediction, as in :class:`~MedAnalysisLib.bundles.BundleConfig` (``overlap``,
            ``tta``, ``postprocess``); they override the members' own defaults.
        combine: :data:`COMBINE_RULES`.
        description: Free text for the model card.
        provenance: Plain JSON about how the ensemble was made (member names, seeds, ...).
        card: The ensemble's model card (:mod:`MedAnalysisLib.bundles.card`), checked and completed on construction.
        schema_version: The schema read (1 or 2); held and written as :data:`ENSEMBLE_SCHEMA_VERSION`.
    """

    name: str
    members: tuple[dict[str, str], ...]
    inference: dict[str, Any] = field(default_factory=lambda: dict(INFERENCE_DEFAULTS))
    combine: str = "mean"
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=default_card)
    schema_version: int = ENSEMBLE_SCHEMA_VERSION

    def __post_init__(self) -> None:
        check_schema_version(self.schema_version, "ensemble")
        object.__setattr__(self, "schema_version", ENSEMBLE_SCHEMA_VERSION)
        object.__setattr__(self, "card", check_card(self.card))
        expect(isinstance(self.name, str) and self.name != "", f"expected an ensemble name, got {self.name!r}")
        expect(self.combine in COMBINE_RULES, f"expected combine to be one of {COMBINE_RULES}, got {self.combine!r}")
        members = tuple(self.members)
        expect(MIN_MEMBERS <= len(members) <= MAX_MEMBERS,
               f"expected {MIN_MEMBERS} to {MAX_MEMBERS} ensemble members, got {len(members)}")
        for member in members:
            check_keys("an ensemble member", member, {"folder", "weights_sha256"})
            expect(isinstance(member["folder"], str) and bool(_MEMBER_FOLDER_RE.match(member["folder"])),
                   f"expected member folders named member-N, got {member['folder']!r}")
            expect(isinstance(member["weights_sha256"], str) and bool(SHA256_RE.match(member["weights_sha256"])),
                   f"expected a member weights sha256 of 64 lowercase hex digits, got {member['weights_sha256']!r}")
        folders = [m["folder"] for m in members]
        expect(len(set(folders)) == len(folders), f"expected distinct member folders, got {folders}")
        object.__setattr__(self, "members", tuple(dict(m) for m in members))
        check_keys("inference", self.inference, set(), set(INFERENCE_DEFAULTS))
        check_inference(self.inference)  # values too: the ensemble's defaults override its members'
        expect(isinstance(self.description, str), "expected description to be a string")
        expect(isinstance(self.provenance, dict), "expected provenance to be a dict")
        check_json_safe("provenance", self.provenance)

    def to_json(self) -> str:
        data = {"schema_version": self.schema_version, "name": self.name, "combine": self.combine,
                "inference": self.inference, "members": [dict(m) for m in self.members],
                "description": self.description, "provenance": self.provenance, "card": self.card}
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> EnsembleConfig:
        data = parse_json(text, ENSEMBLE_FILE)
        expect(isinstance(data, dict), f"expected a JSON object in {ENSEMBLE_FILE}, got {type(data).__name__}")
        optional = {"combine", "inference", "description", "provenance"}
        check_keys(ENSEMBLE_FILE, data, {"schema_version", "name", "members"}, optional | {"card"})
        check_schema_version(data["schema_version"], "ensemble")
        check_keys(ENSEMBLE_FILE, data, {"schema_version", "name", "members"},
                   optional | ({"card"} if data["schema_version"] >= 2 else set()))
        expect(isinstance(data["members"], list), "expected members to be a list")
        return cls(schema_version=data["schema_version"], name=data["name"], members=tuple(data["members"]),
                   inference=data.get("inference", dict(INFERENCE_DEFAULTS)), combine=data.get("combine", "mean"),
                   description=data.get("description", ""), provenance=data.get("provenance", {}),
                   card=data.get("card", {}))
