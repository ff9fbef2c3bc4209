"""Text that comes from users, models, loaders or exceptions, made safe for each format.

A message can hold anything a data loader or a custom attack put in an exception:
backticks, blank lines, HTML, Markdown headings, table rows, links, ANSI colour codes, NUL.
None of it may add structure to a report (a second verdict heading in a GitHub step
summary, a fake table row, an image, a link) or break it (an unparseable JUnit file).
Every writer passes such text through one of these functions.
"""

from __future__ import annotations

import re

__all__ = ["md_code", "md_cell", "one_line", "xml_text"]

#: C0 and C1 control characters, DEL, and the Unicode line and paragraph separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: ANSI escape sequences (colours, cursor moves): dropped whole, not shown as garbage
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
#: characters XML 1.0 cannot hold at all (even escaped)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def one_line(text: object) -> str:
    """``text`` on one line: ANSI sequences dropped, every other control character (line
    breaks included) shown as a space, so it can never start a new line of a report."""
    return _CONTROL.sub(" ", _ANSI.sub("", str(text)))


def md_code(text: object) -> str:
    """``text`` as one Markdown code span, whatever it holds: on one line, fenced with more
    backticks than its longest run of backticks, so nothing in it is rendered (no heading,
    HTML, image, link or emphasis) and it cannot close its own span. Pipes are escaped so
    the span is also safe inside a table cell."""
    body = one_line(text).replace("|", "\\|")
    if not body.strip():
        return "` `" if not body else f"`{body}`"
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if body.startswith("`") or body.endswith("`") or longest else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def md_cell(text: object) -> str:
    """A table cell's text: plain when it holds only characters that mean nothing to
    Markdown (names, figures, ``eps=0.1``), else a code span (:func:`md_code`)."""
    value = one_line(text)
    if re.fullmatch(r"[A-Za-z0-9 ._:=,>=<+()%/-]*", value) and not re.search(r"<[A-Za-z/!?]", value):
        return value
    return md_code(value)


def xml_text(text: object) -> str:
    """``text`` for an XML attribute or element: ANSI sequences dropped and the characters
    XML 1.0 forbids (NUL, other C0 controls, lone surrogates) shown as ``\\xNN``; the
    writer still escapes ``<``, ``&`` and quotes."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", _ANSI.sub("", str(text)))
