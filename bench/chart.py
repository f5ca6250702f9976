"""Draws a bench/run result table as an SVG chart: grouped bars per workload, one bar per
server (filesession's stores, the hyper-hello ceiling, axum + tower-sessions, PHP, Django),
requests per second on a log scale, 8 connections.

    bench/.venv/bin/python bench/chart.py bench/results/stores.md   # writes stores.svg beside it

bench/run calls it after writing its table. Reads only the table's "## 8 connections" section,
so it works on any result file bench/run wrote.
"""
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

WORKLOADS = ["W-read", "W-write", "W-update", "W-new"]
# Short names for the legend, and the order of the bars (the subject first, the ceiling
# after it, the peers last).
SHORT = [
    ("filesession, SESSION_ENGINE=db, SQLite", "filesession, SQLite"),
    ("filesession, SESSION_ENGINE=db, PostgreSQL", "filesession, PostgreSQL"),
    ("filesession, SESSION_FILE_FSYNC", "filesession, fsync"),
    ("filesession, 2 workers", "filesession, 2 workers"),
    ("filesession before", "filesession before"),
    ("filesession's tower layer", "filesession layer (axum)"),
    ("filesession", "filesession (files)"),
    ("axum 0.8 + tower-sessions 0.15, MemoryStore", "tower-sessions, MemoryStore"),
    ("axum 0.8 + tower-sessions 0.15, tower-sessions-file-store", "tower-sessions, file store"),
    ("Django 5.2 db backend", "Django db (SQLite)"),
    ("Django 5.2 file backend, gunicorn", "Django files, gunicorn"),
    ("Django 5.2 file backend, runserver", "Django files, runserver"),
    ("PHP 8 built-in server, files, lazy_write=1", "PHP files, lazy_write=1"),
    ("PHP 8 built-in server, files, lazy_write=0", "PHP files"),
]
COLORS = {
    "filesession (files)": "#1f77b4",
    "filesession, SQLite": "#6baed6",
    "filesession, PostgreSQL": "#9ecae1",
    "filesession, fsync": "#3182bd",
    "filesession, 2 workers": "#08519c",
    "filesession before": "#c6dbef",
    "filesession layer (axum)": "#17becf",
    "tower-sessions, MemoryStore": "#ff7f0e",
    "tower-sessions, file store": "#fdae6b",
    "Django db (SQLite)": "#2ca02c",
    "Django files, gunicorn": "#74c476",
    "Django files, runserver": "#a1d99b",
    "PHP files": "#d62728",
    "PHP files, lazy_write=1": "#fc9272",
}


def short(label):
    for prefix, name in SHORT:
        if label.startswith(prefix):
            return name
    return label


def read(table_path):
    """{server: {workload: req/s}} and the hyper-hello ceiling, 8 connections."""
    text = Path(table_path).read_text()
    section = text.split("## 8 connections", 1)[-1].split("## 1 connection", 1)[0]
    ceiling = None
    m = re.search(r"Ceiling: .*?\*\*([\d,]+) req/s\*\*", section)
    if m:
        ceiling = int(m.group(1).replace(",", ""))
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[2].replace(",", "").isdigit():
            continue
        workload = cells[1].split(":", 1)[0]
        if workload in WORKLOADS:
            rows.setdefault(short(cells[0]), {})[workload] = int(cells[2].replace(",", ""))
    return rows, ceiling


def draw(table_path, svg_path):
    rows, ceiling = read(table_path)
    order = [name for _, name in SHORT if name in rows and not name.startswith("filesession")]
    ours = [name for _, name in SHORT if name in rows and name.startswith("filesession")]
    ours.sort(key=lambda n: n != "filesession (files)")
    servers = ours + (["hyper hello (ceiling)"] if ceiling else []) + order
    if ceiling:
        rows["hyper hello (ceiling)"] = {w: ceiling for w in WORKLOADS}
        COLORS["hyper hello (ceiling)"] = "#7f7f7f"
    width = 0.8 / max(len(servers), 1)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for i, server in enumerate(servers):
        xs = [w + (i - (len(servers) - 1) / 2) * width for w in range(len(WORKLOADS))]
        ys = [rows[server].get(w, 0) for w in WORKLOADS]
        bars = ax.bar(xs, ys, width, label=server, color=COLORS.get(server),
                      hatch="//" if "ceiling" in server else None, edgecolor="white")
        for bar, y in zip(bars, ys):
            if y:
                ax.annotate(f"{y / 1000:.1f}k" if y >= 1000 else str(y),
                            (bar.get_x() + bar.get_width() / 2, y), ha="center",
                            va="bottom", fontsize=6, rotation=90, xytext=(0, 2),
                            textcoords="offset points")
    ax.set_yscale("log")
    top = max((max(r.values()) for r in rows.values() if r), default=1)
    ax.set_ylim(top=top * 3)
    ax.set_xticks(range(len(WORKLOADS)), WORKLOADS)
    ax.set_ylabel("requests per second (log scale)")
    ax.set_title(f"{Path(table_path).name}: 8 connections, server on one core, wrk on the other")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.07))
    ax.grid(axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(svg_path, metadata={"Date": None})


if __name__ == "__main__":
    table = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else str(Path(table).with_suffix(".svg"))
    draw(table, out)
    print(f"chart: {out}")
