"""A client's policy applied to one answer, and the per-request options in the Da Vinci CRD form.

Discovery lists, per service, the options a client may send (the CRD "configuration options" discovery
extension, ``davinci-crd.configuration-options``: ``code``, ``type``, ``name``, ``description``, ``default``),
with the calling client's policy as the defaults. A request may send chosen values in its ``extension`` as
``{"davinci-crd.configuration": {"<code>": value}}``. A value may only make the answer quieter than the client's
policy (silent instead of live, fewer cards, no ``critical``, no ``info``); a louder value is ignored, an
unknown code is ignored, a known code with a value of the wrong type is a 400 naming it. The codes are this
service's own (CRD binds its own codes to its coverage card types; only the form is shared).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cds_service.auth.policy import ClientPolicy
from cds_service.errors import BadRequest

OPTIONS_EXTENSION = "davinci-crd.configuration-options"
REQUEST_EXTENSION = "davinci-crd.configuration"


@dataclass(frozen=True)
class Option:
    code: str
    type: str  # a JSON type: "boolean" or "integer"
    name: str
    description: str


OPTIONS: tuple[Option, ...] = (
    Option("silent", "boolean", "Silent mode",
           "true: the card is evaluated and audited as 'would have shown', and no card is returned."),
    Option("max-cards", "integer", "Maximum number of cards",
           "The most cards this answer carries (at least 1; never more than the client's policy allows)."),
    Option("allow-critical", "boolean", "Critical cards",
           "false: a card of indicator critical is sent as warning (for EHRs that render critical as a pop-up)."),
    Option("info-cards", "boolean", "Info cards", "false: no card of indicator info is returned."),
)


def _default(code: str, policy: ClientPolicy) -> bool | int:
    defaults: dict[str, bool | int] = {"silent": policy.silent, "max-cards": policy.max_cards,
                                       "allow-critical": policy.allow_critical,
                                       "info-cards": "info" in policy.indicators}
    return defaults[code]


def discovery_extension(policy: ClientPolicy) -> dict[str, Any]:
    """A service definition's ``extension`` member: the options, with ``policy``'s values as defaults."""
    return {OPTIONS_EXTENSION: [{"code": o.code, "type": o.type, "name": o.name, "description": o.description,
                                 "default": _default(o.code, policy)} for o in OPTIONS]}


def _chosen(body: Mapping[str, Any]) -> Mapping[str, Any]:
    extension = body.get("extension")
    if extension is None:
        return {}
    if not isinstance(extension, dict):
        raise BadRequest("'extension' must be a JSON object", field="extension")
    chosen = extension.get(REQUEST_EXTENSION)
    if chosen is None:
        return {}
    if not isinstance(chosen, dict):
        raise BadRequest(f"'{REQUEST_EXTENSION}' must be a JSON object of option codes and values",
                         field=f"extension.{REQUEST_EXTENSION}")
    return chosen


def narrowed(policy: ClientPolicy, body: Mapping[str, Any]) -> ClientPolicy:
    """``policy`` narrowed by the options the request chose (never widened); BadRequest for a mistyped one."""
    chosen = _chosen(body)
    update: dict[str, Any] = {}
    for option in OPTIONS:
        if option.code not in chosen:
            continue
        value = chosen[option.code]
        field = f"extension.{REQUEST_EXTENSION}.{option.code}"
        if option.type == "boolean" and not isinstance(value, bool):
            raise BadRequest(f"option '{option.code}' must be true or false", field=field)
        if option.type == "integer" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadRequest(f"option '{option.code}' must be a whole number of at least 1", field=field)
        if option.code == "silent" and value is True:
            update["mode"] = "silent"
        elif option.code == "max-cards":
            update["max_cards"] = min(policy.max_cards, value)
        elif option.code == "allow-critical" and value is False:
            update["allow_critical"] = False
        elif option.code == "info-cards" and value is False:
            update["indicators"] = tuple(i for i in policy.indicators if i != "info")
    # model_copy does not validate: "indicators" may become empty here (then no card is returned)
    return policy.model_copy(update=update) if update else policy


def apply(policy: ClientPolicy, cards: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cards ``policy`` lets through, in order: ``critical`` sent as ``warning`` where it is not allowed, then
    only the indicators enabled, at most ``max_cards``. A card is otherwise unchanged (same uuid, text and
    suggestions)."""
    out: list[dict[str, Any]] = []
    for card in cards:
        if card.get("indicator") == "critical" and not policy.allow_critical:
            card = {**card, "indicator": "warning"}
        if card.get("indicator") in policy.indicators:
            out.append(card)
    return out[:policy.max_cards]
