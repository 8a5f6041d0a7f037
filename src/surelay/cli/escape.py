"""Text that came from a message, a producer or a downstream, made safe for a terminal.

A dead letter's reason holds part of a downstream's error body, and keys, headers and
payloads are whatever a producer sent: printed raw, `ESC]0;...BEL` retitles the
operator's terminal and `ESC[2J` clears it. `printable` shows every such character as an
escape instead; `text` also keeps rich from reading `[bold red]` in it as markup.
"""

from __future__ import annotations

from rich.text import Text

__all__ = ["printable", "text"]

_BIDI = (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
"""Bidirectional embeddings, overrides and isolates: they reorder what follows them on the
line ("Trojan source")."""

_ESCAPED = (
    *range(0x20),  # C0: ESC, BEL, CR, LF, TAB...
    *range(0x7F, 0xA0),  # DEL and C1 (0x9B is a one-byte CSI on some terminals)
    *_BIDI,
    0x2028,  # line and paragraph separators: a line break to some terminals
    0x2029,
    *range(0xD800, 0xE000),  # lone surrogates: not encodable, they would crash the output
)

_TABLE: dict[int, str] = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _ESCAPED
}
_TABLE[ord("\\")] = "\\\\"  # so that every escape reads back as exactly one character
_TABLE.update({ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"})  # as Python writes them


def printable(value: object) -> str:
    """`str(value)` with control characters (C0, DEL, C1), bidi overrides and isolates,
    line separators and lone surrogates written as `\\n`, `\\xNN` or `\\uNNNN`, and a
    backslash as `\\\\`: nothing in it moves the cursor or changes the terminal, and
    different inputs stay different (`ESC` reads `\\x1b`, a backslash then `x1b` reads
    `\\\\x1b`)."""
    return str(value).translate(_TABLE)


def text(value: object, style: str = "") -> Text:
    """`printable(value)` as a rich `Text`: shown literally, never parsed as markup."""
    return Text(printable(value), style=style)
