"""`surelay.cli.escape`: nothing a producer or a downstream wrote can drive the terminal."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from surelay.cli.escape import printable, text

BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def dangerous(char: str) -> bool:
    code = ord(char)
    return (
        unicodedata.category(char) in ("Cc", "Cs")  # C0, DEL, C1; lone surrogates
        or code in BIDI
        or code in (0x2028, 0x2029)
    )


def unescape(shown: str) -> str:
    """The inverse of `printable` (what a reader does in their head)."""

    def one(match: re.Match[str]) -> str:
        escape = match.group(0)
        named = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
        return named.get(escape) or chr(int(escape[2:], 16))

    return re.sub(r"\\[\\tnr]|\\x[0-9a-f]{2}|\\u[0-9a-f]{4}", one, shown)


NASTY = ["\x1b", "\x07", "\x00", "\x7f", "\x9b", "\u202e", "\u2066", "\ud800", "\udfff", "\\"]
ANY_TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=()),  # every code point, lone surrogates too
        st.sampled_from([*NASTY, "x", "1", "b", "u", "n", "\n", "\t"]),  # and escapes' look-alikes
    )
)


@given(ANY_TEXT)
def test_no_control_character_survives_and_every_input_reads_back(raw: str) -> None:
    shown = printable(raw)
    assert not any(dangerous(c) for c in shown)
    shown.encode("utf-8")  # no lone surrogate left to crash the output
    assert unescape(shown) == raw  # injective: different inputs are shown differently


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf"))))
def test_plain_text_without_backslashes_is_shown_as_it_is(raw: str) -> None:
    plain = raw.replace("\\", "")
    assert printable(plain) == plain


def test_what_an_attacker_writes_is_shown_escaped() -> None:
    assert printable("\x1b]0;pwned\x07\x1b[2J") == "\\x1b]0;pwned\\x07\\x1b[2J"
    assert printable("\x9b31m") == "\\x9b31m"  # C1 CSI
    assert printable("abc\u202edcba") == "abc\\u202edcba"  # right-to-left override
    assert printable("\ud800") == "\\ud800"
    assert printable("line\nforged: yes") == "line\\nforged: yes"
    assert printable(r"C:\x1b") == r"C:\\x1b"  # a literal backslash is not an escape
    assert printable(None) == "None" and printable(42) == "42"


def test_rich_shows_markup_in_data_literally() -> None:
    console = Console(width=80, force_terminal=False, record=True)
    console.print(text("[bold red]x[/] \x1b[31m"))
    assert console.export_text().strip() == "[bold red]x[/] \\x1b[31m"
