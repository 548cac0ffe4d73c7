"""Untrusted text (prompts, model outputs, demonstrations, references) rendered as markdown.

Two fences, in this order (docs/ARCHITECTURE.md, "Rendered text"):

1. markdown-it-py with raw HTML switched off: `<script>` in the text stays the visible text
   `<script>`; images are not parsed (an image would fetch an outside address when shown), so
   `![x](…)` stays literal text; links go through markdown-it's own check, which refuses
   `javascript:`, `vbscript:`, `file:` and `data:` targets.
2. nh3 (ammonia) over the result with an allow-list: only the tags markdown produces, `href`
   only with http, https or mailto, `class` only on code spans and only Pygments' token classes,
   so no attribute an attacker chooses survives.

Fenced code blocks with a language Pygments knows get its token classes (coloured by app.css);
every code block is monospace. Line breaks in the text are kept (`breaks`), because model
outputs and demonstrations use single newlines for lines of a poem or a list.
"""
from __future__ import annotations

from functools import lru_cache

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

TAGS = {
    "p", "br", "hr", "strong", "em", "s", "del", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
}
TOKEN_CLASSES = {name for name in STANDARD_TYPES.values() if name}
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}
LANGUAGE_LABEL_MAX = 24


def _highlight(code: str, lang: str, _attrs) -> str:
    """markdown-it's highlight hook: Pygments token spans for a known language, else ''
    (markdown-it then escapes the code itself)."""
    name = (lang or "").strip().split()[0] if lang and lang.strip() else ""
    if not name:
        return ""
    try:
        lexer = get_lexer_by_name(name[:LANGUAGE_LABEL_MAX])
    except ClassNotFound:
        return ""
    return highlight(code, lexer, HtmlFormatter(nowrap=True))


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False, "highlight": _highlight})
    md.enable(["table", "strikethrough"])
    md.disable("image")
    return md


def _clean(html: str) -> str:
    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        allowed_classes={"span": TOKEN_CLASSES},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def render_markdown(text: str | None) -> SafeString:
    """Sanitized HTML for untrusted markdown `text` (safe to put in a page as it is)."""
    if not text:
        return mark_safe("")
    html = _parser().render(text)
    return mark_safe(_clean(html))  # noqa: S308 — nh3's allow-list is the reason this is safe


def counts(text: str | None) -> dict[str, int]:
    """Characters and words of a text, as the page shows them beside a response."""
    text = text or ""
    return {"chars": len(text), "words": len(text.split())}
