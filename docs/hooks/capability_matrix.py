"""mkdocs hook: replace ``<!-- capability-matrix -->`` with a table built from driver flags.

The matrix is generated at build time from the driver classes themselves, so the docs cannot
drift from what the code (and the conformance suite) says.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- capability-matrix -->"


def render() -> str:
    """Return the capability matrix as a markdown table."""
    from unifiedq import Capability
    from unifiedq._errors import UnifiedQError
    from unifiedq._registry import available_drivers, get_driver

    caps = [c for c in Capability]
    head = "| scheme | " + " | ".join(c.name or "" for c in caps) + " |"
    sep = "|---|" + "---|" * len(caps)
    rows = [head, sep]
    for spec in available_drivers():
        try:
            drv = get_driver(spec.scheme)
        except UnifiedQError as exc:
            rows.append(f"| `{spec.scheme}://` | not installed: {exc} |" + " |" * (len(caps) - 1))
            continue
        cls = drv.sync_class or drv.async_class
        have = getattr(cls, "capabilities", Capability(0))
        if not have:
            # quic:// declares its flags per URL (capabilities=core|<backend>), see its page.
            rows.append(f"| `{spec.scheme}://` | declared per URL with `capabilities=`; see the "
                        "driver's page |" + " |" * (len(caps) - 1))
            continue
        cells = ["✓" if c in have else "·" for c in caps]
        rows.append(f"| `{spec.scheme}://` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Fill the marker on any page that has it."""
    return markdown.replace(MARKER, render()) if MARKER in markdown else markdown
