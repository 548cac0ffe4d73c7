"""Template helpers for untrusted text: `{{ text|markdown }}` (labelapp.pages.rendering) and
`{% text_block text %}`, the rendered/raw pair every page shows a text in."""
from __future__ import annotations

from django import template

from labelapp.pages.rendering import counts, render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str | None):
    return render_markdown(text)


@register.inclusion_tag("labelapp/_text.html")
def text_block(text: str | None, testid: str = "", counted: bool = False):
    """The text rendered as sanitized markdown, and the raw text beside it (hidden until the
    page's raw/rendered toggle shows it); with `counted`, its characters and words."""
    return {"text": text or "", "testid": testid, "counts": counts(text) if counted else None}
