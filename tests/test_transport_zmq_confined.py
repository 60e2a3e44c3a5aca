"""zmq stays behind the transport interface (STYLE 3): only fedrec/transport/zmq_*.py import it."""

from __future__ import annotations

import ast
from pathlib import Path

FEDREC = Path(__file__).resolve().parents[1] / "fedrec"


def _imports_zmq(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(n.split(".")[0] == "zmq" for n in names):
            return True
    return False


def test_only_the_zmq_transport_modules_import_zmq() -> None:
    importing = sorted(str(p.relative_to(FEDREC)) for p in FEDREC.rglob("*.py") if _imports_zmq(p))
    assert importing == ["transport/zmq_channel.py", "transport/zmq_handshake.py", "transport/zmq_io.py"]
