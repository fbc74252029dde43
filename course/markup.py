"""Text that came from a learner, made safe to show or to use as a file name.

Streamlit renders labels, captions, alerts, progress texts and metric values as
Markdown (images, links, ``:color[...]`` and ``:material/...:`` directives,
``$...$`` maths). A learner's name goes through :func:`escape_markdown` before it
is put into any of them, so it is always shown as the characters typed.
"""

from __future__ import annotations

import re
import string

_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")
_UNSAFE_FILE = re.compile(r"[^A-Za-z0-9._-]+")


def escape_markdown(text: str) -> str:
    """``text`` with every ASCII punctuation character backslash-escaped (CommonMark
    allows this for any of them), so nothing in it is read as Markdown, HTML, a
    Streamlit directive or maths; line breaks become spaces."""
    return _PUNCTUATION.sub(r"\\\1", " ".join(str(text).split()))


def safe_filename(text: str, fallback: str = "learner", max_len: int = 40) -> str:
    """A file-name part made of letters, digits, '.', '_' and '-' only."""
    name = _UNSAFE_FILE.sub("_", str(text)).strip("._")[:max_len]
    return name or fallback
