"""One short line per daemon status document, for `teredo lab status` and the demo."""

from __future__ import annotations

from typing import Any


def status_line(doc: dict[str, Any]) -> str:
    """One short line of a daemon's status document (for `teredo lab status`)."""
    st = doc.get("status")
    st = st if isinstance(st, dict) else {}
    drops = st.get("drops")
    dropped = sum(v for v in drops.values() if isinstance(v, int)) if isinstance(drops, dict) else 0
    role = doc.get("role")
    if role == "client":
        text = f"client {st.get('state')} {st.get('address') or ''} NAT {st.get('nat')}"
    elif role == "server":
        text = (
            f"server RAs {st.get('router_advertisements')}, bubbles {st.get('bubbles_forwarded')}"
            f", packets {st.get('packets_forwarded')}, native {st.get('native_forwarded')}"
        )
    elif role == "relay":
        counters = st.get("counters")
        c = counters if isinstance(counters, dict) else {}
        text = (
            f"relay peers {st.get('peers')}/{st.get('capacity')} ({st.get('trusted_peers')} "
            f"trusted), to teredo {c.get('to_teredo')}, from teredo {c.get('from_teredo')}"
        )
    else:
        text = str(role)
    if doc.get("error"):
        text += f" (error: {doc['error']})"
    return " ".join(text.split()) + f", drops {dropped}"
