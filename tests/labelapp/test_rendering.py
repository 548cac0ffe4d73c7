"""Markdown rendering of untrusted text: what renders, and what never passes either fence."""
from html.parser import HTMLParser

import pytest

from labelapp.pages.rendering import _clean, counts, render_markdown

PAYLOADS = {
    "javascript link": "[click](javascript:window.pwned=1)",
    "javascript link, mixed case": "[click](JaVaScRiPt:window.pwned=1)",
    "javascript link, entity-encoded": "[click](&#106;avascript:window.pwned=1)",
    "javascript autolink": "<javascript:window.pwned=1>",
    "javascript reference link": "[click][1]\n\n[1]: javascript:window.pwned=1",
    "vbscript link": "[click](vbscript:msgbox(1))",
    "data: link": "[click](data:text/html;base64,PHNjcmlwdD53aW5kb3cucHduZWQ9MTwvc2NyaXB0Pg==)",
    "data: image": "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    "image with a handler": '![x](x" onerror="window.pwned=1)',
    "raw img with onerror": '<img src=x onerror="window.pwned=1">',
    "raw HTML block": '<div onmouseover="window.pwned=1">\nhover me\n</div>',
    "script block": "<script>window.pwned=1</script>",
    "iframe": '<iframe src="javascript:window.pwned=1"></iframe>',
    "svg onload": "<svg onload=window.pwned=1>",
    "style block": "<style>body { display: none }</style>",
    "html in a link title": '[x](https://example.com "a\\" onmouseover=\\"window.pwned=1")',
    "code fence with a handler": "```html\n<img src=x onerror=window.pwned=1>\n```",
}


class Elements(HTMLParser):
    """Every start tag with its attributes, as a browser's parser would see them."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize("name", PAYLOADS)
def test_markdown_payloads_render_inert(name):
    html = str(render_markdown(PAYLOADS[name]))
    elements = Elements(html).found
    assert not {tag for tag, _ in elements} & {"script", "img", "iframe", "svg", "style", "div", "object", "embed"}, html
    for tag, attrs in elements:
        assert not [a for a in attrs if a.startswith("on") or a in ("style", "src")], (tag, attrs)
        if "href" in attrs:
            assert attrs["href"].startswith(("http://", "https://", "mailto:")), attrs


def test_markdown_and_code_render():
    html = str(render_markdown("**bold** and `x`\n\n```python\ndef f():\n    return 1\n```\n\n- one\n- two"))
    assert "<strong>bold</strong>" in html and "<code>x</code>" in html
    assert '<pre><code><span class="k">def</span>' in html  # Pygments token classes
    assert "<li>one</li>" in html
    assert str(render_markdown("line one\nline two")) == "<p>line one<br>\nline two</p>\n"  # newlines kept
    link = str(render_markdown("[docs](https://example.com/a)"))
    assert link == '<p><a href="https://example.com/a" rel="noopener noreferrer nofollow">docs</a></p>\n'
    assert str(render_markdown("")) == ""


def test_the_sanitizer_alone_is_a_second_fence():
    """Should markdown-it ever emit something it should not, nh3's allow-list still removes it."""
    hostile = (
        '<p onclick="x()">a</p><img src=x onerror=y()><script>z()</script><a href="javascript:q()">l</a>'
        '<span class="k evil" style="position:fixed">s</span><code class="language-js">c</code>'
        '<a href="data:text/html,hi">d</a><a href="https://ok.example/" target="_blank">ok</a>'
    )
    clean = _clean(hostile)
    assert clean == (
        '<p>a</p><a rel="noopener noreferrer nofollow">l</a><span class="k">s</span><code>c</code>'
        '<a rel="noopener noreferrer nofollow">d</a><a href="https://ok.example/" rel="noopener noreferrer nofollow">ok</a>'
    )


def test_counts():
    assert counts("Two words") == {"chars": 9, "words": 2}
    assert counts("") == {"chars": 0, "words": 0}
