"""``nms-cds report``: what a clinical informaticist reviews each month, from the card audit and feedback.

Prints cards per indicator, hook and rule; acceptance and override rates overall, per rule and per
override reason; feedback that does not match an audited card; repeats not shown within the quiet
period, per hook. ``--png FILE`` writes a chart of
cards and overrides per day (matplotlib, imported only here: never on the request path). Names that came from
clients (override reason codes) are printed with control characters escaped (:mod:`cds_service.printable`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cds_service.printable import printable
from cds_service.services.override_reasons import reason_code
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
    suppressed: int = 0  # repeats not shown within the quiet period
    suppressed_by_hook: Counter[str] = field(default_factory=Counter)
    silent: Counter[str] = field(default_factory=Counter)  # silent mode: would have shown, by indicator


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
            # either code of a reason (the CDS Hooks 3.0 one or the project's) counts as that reason
            report.override_reasons[reason_code(f.override_system, f.override_code) or "(no reason given)"] += 1
            report.overrides_per_day[_day(f.received_at)] += 1
    for sup in rows.suppressed:
        report.suppressed += 1
        report.suppressed_by_hook[sup.hook] += 1
    for c in rows.cards:
        if c.mode == "silent":  # never shown, so neither served nor open to feedback
            report.silent[c.indicator] += 1
            continue
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


def as_json(r: Report) -> dict[str, Any]:
    """The card report for dashboards: the same numbers as the tables."""
    return {
        "window": {"since": r.since.isoformat(), "until": r.until.isoformat()},
        "cards": r.cards, "accepted": r.accepted, "overridden": r.overridden,
        "by_indicator": {k: {"cards": n, **r.indicator_outcomes[k]} for k, n in r.by_indicator.items()},
        "by_hook": dict(r.by_hook),
        "by_rule": {k: {"cards": n, **r.rule_outcomes[k]} for k, n in r.by_rule.items()},
        "override_reasons": dict(r.override_reasons),
        "feedback_items": r.feedback_items, "unlinked_feedback": r.unlinked_feedback,
    }


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f} %" if whole else "    –  "


def render_text(r: Report) -> str:
    lines = [f"nms-cds card report, {r.since:%Y-%m-%d %H:%M} to {r.until:%Y-%m-%d %H:%M} UTC", ""]
    lines.append(f"Cards served: {r.cards}   with feedback: {r.accepted + r.overridden}   "
                 f"accepted: {r.accepted} ({_pct(r.accepted, r.cards).strip()})   "
                 f"overridden: {r.overridden} ({_pct(r.overridden, r.cards).strip()})")
    if r.silent:
        lines.append(f"Silent mode, would have shown (not returned): {sum(r.silent.values())} ("
                     + ", ".join(f"{name} {n}" for name, n in r.silent.most_common()) + ")")
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
    if r.suppressed:
        lines += ["", f"{'Repeats not shown (quiet)':<28}{'cards':>7}"]
        lines += [f"{name:<28}{n:>7}" for name, n in r.suppressed_by_hook.most_common()]
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


def _write_chart(draw: Callable[[Path], None], png: str | None) -> int:
    """``--png FILE``: draw the chart there; 1 (and why) when matplotlib is not installed, else 0."""
    if not png:
        return 0
    try:
        draw(Path(png))
    except ImportError:
        print("nms-cds report: --png needs matplotlib (pip install 'nms-cds[report]')", file=sys.stderr)
        return 1
    print(f"chart written to {png}", file=sys.stderr)
    return 0


def _outcome_records(args: argparse.Namespace, settings: Any) -> Any:
    from cds_service.fhir.paging import PageLimits
    from cds_service.net.http import new_session
    from cds_service.outcomes import records

    if args.export:
        directory = Path(args.export)
        if not directory.is_dir():
            raise ValueError(f"--export {args.export}: not a directory")
        return records.from_export(directory)
    token = Path(args.fhir_token_file).read_text(encoding="utf-8").strip() if args.fhir_token_file else None
    limits = PageLimits(settings.fhir_connect_timeout, settings.fhir_read_timeout, max_pages=args.max_pages)
    with new_session(settings.tls_trust[0]) as session:
        return records.from_server(args.fhir_base, session, limits, token)


def run_outcomes(args: argparse.Namespace, rows: ReportRows, key: bytes, settings: Any, *, since: float,
                 now: float) -> int:
    import requests

    from cds_service.audit import patient_token
    from cds_service.fhir.paging import ServerBusy
    from cds_service.outcomes import summary
    from cds_service.outcomes.chart import render_png as outcome_png  # matplotlib: imported when drawing

    try:
        horizon = timedelta(seconds=parse_since(args.horizon))
        found = _outcome_records(args, settings)
    except (ValueError, OSError, requests.RequestException, ServerBusy) as exc:
        print(f"nms-cds report --outcomes: {printable(str(exc))[:300]}", file=sys.stderr)
        return 1
    result = summary.build(rows.cards, found, since=since, until=now, horizon=horizon,
                           token_of=lambda pid: patient_token(pid, key, opt_in=settings.audit_patient_ids))
    if args.json:
        sys.stdout.write(json.dumps(result.as_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(summary.render_text(result, printable))
    return _write_chart(lambda path: outcome_png(result, path), args.png)


def run(args: argparse.Namespace) -> int:
    from cds_service.config_report import load_settings
    from cds_service.errors import StoreUnavailable
    from cds_service.store import open_store
    from cds_service.store.keys import audit_key

    try:
        window = parse_since(args.since)
    except ValueError as exc:
        print(f"nms-cds report: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    if args.outcomes and not (args.export or args.fhir_base):
        print("nms-cds report: --outcomes needs --export DIR or --fhir-base URL", file=sys.stderr)
        return 2
    try:
        settings = load_settings()  # ConfigError (secrets redacted) for the command line
        store = open_store(settings)
        try:
            rows = store.report_rows(now - window)
            key = audit_key(settings, store) if args.outcomes else b""
        finally:
            store.close()
    except StoreUnavailable as exc:
        print(f"nms-cds report: store unavailable: {exc.cause}", file=sys.stderr)
        return 1
    if args.outcomes:
        return run_outcomes(args, rows, key, settings, since=now - window, now=now)
    report = build(rows, since=now - window, now=now)
    sys.stdout.write(json.dumps(as_json(report), indent=2) + "\n" if args.json else render_text(report))
    return _write_chart(lambda path: render_png(report, path), args.png)


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
    p.add_argument("--json", action="store_true", help="print JSON (for dashboards) instead of tables")
    p.add_argument("--outcomes", action="store_true",
                   help="join the warning and critical cards to what followed in the record: PPV, firing rate, "
                        "time to action (needs --export or --fhir-base)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--export", metavar="DIR", help="records from FHIR JSON / NDJSON files under DIR")
    source.add_argument("--fhir-base", metavar="URL", help="records from this FHIR server (paged, capped)")
    p.add_argument("--fhir-token-file", metavar="FILE", help="a bearer token for --fhir-base, read from FILE")
    p.add_argument("--max-pages", type=int, default=50, help="pages read per resource type (default 50)")
    p.add_argument("--horizon", default="14d", help="outcomes counted this long after a card: 14d (default)")
    p.set_defaults(func=run)
    p = sub.add_parser("purge", help="delete audit and feedback older than NMS_CDS_AUDIT_RETENTION_DAYS")
    p.set_defaults(func=purge)
