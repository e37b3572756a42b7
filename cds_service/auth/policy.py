"""Per-client policy: what one trusted CDS client (tenant) gets from the service.

A hospital adopts an interruptive alert step by step: one hook first, silently, then live, without
``critical`` where its EHR renders it as a pop-up. The policy says, per client:

- ``hooks``: the hooks it is served on (a service of another hook answers no card, unevaluated, and is left out
  of that client's discovery);
- ``indicators``: the card indicators it may receive (a card of another indicator is not returned);
- ``mode``: ``live`` (cards returned) or ``silent`` (cards evaluated and audited as "would have shown", none
  returned);
- ``max_cards``: the most cards one answer carries;
- ``allow_critical``: false sends a ``critical`` card as ``warning`` (same card otherwise).

The default policy is the ``NMS_CDS_POLICY_*`` settings; an entry of the trusted clients file may carry a
``policy`` object overriding any of these members for that client. A request may ask for a quieter answer
still (:mod:`cds_service.services.client_options`), never a louder one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from cds_service.config import Settings

Hook = Literal["patient-view", "order-select", "order-sign"]
Indicator = Literal["info", "warning", "critical"]
HOOKS: tuple[Hook, ...] = ("patient-view", "order-select", "order-sign")
INDICATORS: tuple[Indicator, ...] = ("info", "warning", "critical")
MAX_CARDS = 10  # the most any policy may allow (the services answer at most a few cards today)


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(values)) != len(values):
        raise ValueError("lists a value twice")
    return values


class ClientPolicy(BaseModel):
    """The effective policy of one client: every member set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hooks: tuple[Hook, ...] = Field(HOOKS, min_length=1)
    indicators: tuple[Indicator, ...] = Field(INDICATORS, min_length=1)
    mode: Literal["live", "silent"] = "live"
    max_cards: int = Field(MAX_CARDS, ge=1, le=MAX_CARDS)
    allow_critical: bool = True

    _distinct = field_validator("hooks", "indicators")(_unique)

    @property
    def silent(self) -> bool:
        return self.mode == "silent"

    def describe(self) -> str:
        """One line for ``nms-cds check-config`` and the start-up log."""
        critical = "critical allowed" if self.allow_critical else "critical sent as warning"
        return (f"{self.mode}; hooks {', '.join(self.hooks)}; indicators {', '.join(self.indicators)}; "
                f"at most {self.max_cards} card(s); {critical}")


class PolicyOverride(BaseModel):
    """A trusted client's ``policy`` object: only the members it sets differ from the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hooks: tuple[Hook, ...] | None = Field(None, min_length=1)
    indicators: tuple[Indicator, ...] | None = Field(None, min_length=1)
    mode: Literal["live", "silent"] | None = None
    max_cards: StrictInt | None = Field(None, ge=1, le=MAX_CARDS)
    allow_critical: StrictBool | None = None

    @field_validator("hooks", "indicators")
    @classmethod
    def _distinct(cls, values: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if values is None else _unique(values)

    def over(self, default: ClientPolicy) -> ClientPolicy:
        return default.model_copy(update=self.model_dump(exclude_none=True))


def parse_override(value: object) -> PolicyOverride:
    """A ``policy`` member of the trusted clients file; ValueError naming the first problem in words."""
    if not isinstance(value, dict):
        raise ValueError("'policy' must be a JSON object")
    try:
        return PolicyOverride.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
        if first["type"] == "extra_forbidden":
            raise ValueError(f"'policy' member {where!r} is unknown (known: {', '.join(ClientPolicy.model_fields)})"
                             ) from None
        problem = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"'policy' member {where!r}: {problem[:1].lower()}{problem[1:]}") from None


def default_policy(settings: Settings) -> ClientPolicy:
    """The policy of every client without its own ``policy`` (and of every caller with authentication off)."""
    return ClientPolicy(hooks=tuple(settings.policy_hooks), indicators=tuple(settings.policy_indicators),
                        mode="silent" if settings.policy_silent else "live", max_cards=settings.policy_max_cards,
                        allow_critical=settings.policy_allow_critical)
