"""Plain-text tables for the terminal (no Ray, Optuna or MLflow import: ``bvae frontier`` uses them too)."""

from __future__ import annotations


def format_table(header: list[str], body: list[list]) -> str:
    """Left-aligned plain-text columns with a rule under the header."""
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])
