"""``nms-cds report``: what a clinical informaticist reviews each month, from the card audit and feedback.

Prints cards per indicator, hook and rule; acceptance and override rates overall, per rule and per
override reason; feedback that does not match an audited card. ``--png FILE`` writes a chart of
cards and overrides per day (matplotlib, imported only here: never on the request path). Names that came from
clients (override reason codes) are printed with control characters escaped (:mod:`cds_service.printable`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from cds_service.printable import printable
from cds_service.store.base import ReportRows

_SINCE = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> float:
    """'30d', '12h', '2w' → seconds; ValueError otherwise."""
    match = _SINCE.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"--since must look like 30d, 12h or 2w, not {text[:20]!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Report:
    since: datetime
    until: datetime
    cards: int = 0
    by_indicator: Counter[str] = field(default_factory=Counter)
    by_hook: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)
    accepted: int = 0  # cards with an "accepted" outcome
    overridden: int = 0  # cards with an "overridden" outcome
    rule_outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    indicator_outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    override_reasons: Counter[str] = field(default_factory=Counter)
    feedback_items: int = 0
    unlinked_feedback: int = 0  # feedback for a card not in the audit of this window
    cards_per_day: Counter[date] = field(default_factory=Counter)
    overrides_per_day: Counter[date] = field(default_factory=Counter)


def _day(epoch: float) -> date:
    return datetime.fromtimestamp(epoch, UTC).date()


def build(rows: ReportRows, *, since: float, now: float) -> Report:
    report = Report(since=datetime.fromtimestamp(since, UTC), until=datetime.fromtimestamp(now, UTC))
    outcomes: dict[str, set[str]] = defaultdict(set)
    audited = {c.card_uuid for c in rows.cards}
    for f in rows.feedback:
        report.feedback_items += 1
        outcomes[f.card_uuid].add(f.outcome)
        if f.card_uuid not in audited:
            report.unlinked_feedback += 1
        if f.outcome == "overridden":
            report.override_reasons[f.override_code or "(no reason given)"] += 1
            report.overrides_per_day[_day(f.received_at)] += 1
    for c in rows.cards:
        report.cards += 1
        report.by_indicator[c.indicator] += 1
        report.by_hook[c.hook] += 1
        report.cards_per_day[_day(c.served_at)] += 1
        seen = outcomes.get(c.card_uuid, set())
        outcome = "overridden" if "overridden" in seen else "accepted" if "accepted" in seen else "none"
        report.accepted += outcome == "accepted"
        report.overridden += outcome == "overridden"
        report.indicator_outcomes[c.indicator][outcome] += 1
        for rule in c.rules:
            report.by_rule[rule] += 1
            report.rule_outcomes[rule][outcome] += 1
    return report


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f} %" if whole else "    –  "


def render_text(r: Report) -> str:
    lines = [f"nms-cds card report, {r.since:%Y-%m-%d %H:%M} to {r.until:%Y-%m-%d %H:%M} UTC", ""]
    lines.append(f"Cards served: {r.cards}   with feedback: {r.accepted + r.overridden}   "
                 f"accepted: {r.accepted} ({_pct(r.accepted, r.cards).strip()})   "
                 f"overridden: {r.overridden} ({_pct(r.overridden, r.cards).strip()})")
    lines += ["", f"{'Indicator':<28}{'cards':>7}{'accepted':>11}{'overridden':>12}{'no feedback':>13}"]
    for name, n in r.by_indicator.most_common():
        o = r.indicator_outcomes[name]
        lines.append(f"{printable(name):<28}{n:>7}{_pct(o['accepted'], n):>11}{_pct(o['overridden'], n):>12}"
                     f"{_pct(o['none'], n):>13}")
    lines += ["", f"{'Hook':<28}{'cards':>7}"]
    lines += [f"{printable(name):<28}{n:>7}" for name, n in r.by_hook.most_common()]
    lines += ["", f"{'Rule fired':<28}{'cards':>7}{'accepted':>11}{'overridden':>12}{'no feedback':>13}"]
    for name, n in r.by_rule.most_common():
        o = r.rule_outcomes[name]
        lines.append(f"{printable(name):<28}{n:>7}{_pct(o['accepted'], n):>11}{_pct(o['overridden'], n):>12}"
                     f"{_pct(o['none'], n):>13}")
    total_overrides = sum(r.override_reasons.values())
    lines += ["", f"{'Override reason':<28}{'count':>7}{'of overrides':>14}"]
    for name, n in r.override_reasons.most_common():
        lines.append(f"{printable(name[:27]):<28}{n:>7}{_pct(n, total_overrides):>14}")
    lines += ["", f"Feedback items: {r.feedback_items}; for cards not in this window's audit: {r.unlinked_feedback}"]
    return "\n".join(lines) + "\n"


def render_png(r: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    first, last = r.since.date(), r.until.date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    cards = [r.cards_per_day.get(d, 0) for d in days]
    overrides = [r.overrides_per_day.get(d, 0) for d in days]
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    xs = list(range(len(days)))
    ax.bar([x - 0.2 for x in xs], cards, width=0.4, label="cards served", color="#3b6ea5")
    ax.bar([x + 0.2 for x in xs], overrides, width=0.4, label="overridden", color="#d08c2f")
    step = max(1, len(days) // 15)
    ax.set_xticks(xs[::step], [d.strftime("%m-%d") for d in days[::step]])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("per day")
    ax.set_title(f"nms-cds: {r.cards} cards, {r.overridden} overridden, {r.accepted} accepted "
                 f"({r.since:%Y-%m-%d} to {r.until:%Y-%m-%d})", fontsize=10)
    ax.set_ylim(0, max([*cards, *overrides, 1]) * 1.3)  # room for the legend above the bars
    ax.legend(loc="upper left", ncol=2, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from cds_service.config_report import load_settings
    from cds_service.errors import StoreUnavailable
    from cds_service.store import open_store

    try:
        window = parse_since(args.since)
    except ValueError as exc:
        print(f"nms-cds report: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    try:
        store = open_store(load_settings())  # ConfigError (secrets redacted) for the command line
        rows = store.report_rows(now - window)
        store.close()
    except StoreUnavailable as exc:
        print(f"nms-cds report: store unavailable: {exc.cause}", file=sys.stderr)
        return 1
    report = build(rows, since=now - window, now=now)
    sys.stdout.write(render_text(report))
    if args.png:
        try:
            render_png(report, Path(args.png))
        except ImportError:
            print("nms-cds report: --png needs matplotlib (pip install 'nms-cds[report]')", file=sys.stderr)
            return 1
        print(f"chart written to {args.png}", file=sys.stderr)
    return 0


def purge(args: argparse.Namespace) -> int:
    from cds_service.config_report import load_settings
    from cds_service.errors import StoreUnavailable
    from cds_service.store import open_store

    settings = load_settings()
    now = time.time()
    try:
        store = open_store(settings)
        counts = store.purge(before=now - settings.audit_retention_days * 86400.0, now=now)
        store.close()
    except StoreUnavailable as exc:
        print(f"nms-cds purge: store unavailable: {exc.cause}", file=sys.stderr)
        return 1
    print(", ".join(f"{v} {k}" for k, v in counts.items()) + " purged")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="cards, rules and override rates from the card audit (for informaticists)")
    p.add_argument("--since", default="30d", help="window: 30d (default), 12h, 2w")
    p.add_argument("--png", metavar="FILE", help="also write a chart of cards and overrides per day")
    p.set_defaults(func=run)
    p = sub.add_parser("purge", help="delete audit and feedback older than NMS_CDS_AUDIT_RETENTION_DAYS")
    p.set_defaults(func=purge)
