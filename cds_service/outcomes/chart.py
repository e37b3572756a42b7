"""The outcome report's chart: per indicator and rule, cards, cards acted on and cards followed by NMS coded
(matplotlib, imported only here: never on the request path)."""

from __future__ import annotations

from pathlib import Path

from cds_service.outcomes.summary import OutcomeReport


def render_png(r: OutcomeReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(f"{name}: {key}", t) for name in ("indicator", "rule")
              for key, t in sorted(r.splits.get(name, {}).items(), key=lambda kv: -kv[1].cards)]
    labels = [g[0][:32] for g in groups]
    ys = list(range(len(groups)))[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(groups) + 1.4), dpi=100)
    ax.barh([y + 0.27 for y in ys], [t.with_record for _, t in groups], height=0.27, label="cards (record found)",
            color="#3b6ea5")
    ax.barh(ys, [t.acted_on for _, t in groups], height=0.27, label="acted on", color="#d08c2f")
    ax.barh([y - 0.27 for y in ys], [t.nms_coded for _, t in groups], height=0.27, label="NMS coded", color="#7a3b8f")
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_title(f"nms-cds outcomes within {r.horizon.total_seconds() / 3600:.0f} h of the card "
                 f"({r.since:%Y-%m-%d} to {r.until:%Y-%m-%d})", fontsize=10)
    ax.legend(loc="lower right", frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
