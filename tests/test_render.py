"""The report's Markdown-to-HTML renderer: text from results folders (titles, descriptions, labels) is data."""

import re
from html.parser import HTMLParser

import pytest

from analysis.render import Bullets, Grid, Heading, Para, to_html


def page(*blocks):
    return to_html(list(blocks), folder=None, title='study "x" <script>')


def attributes(html_text):
    """Every attribute name of every tag in the page, as a browser's parser reads them."""
    names = set()

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            names.update(name for name, _ in attrs)

    Parser().feed(html_text)
    return names


def test_a_quote_in_a_link_does_not_become_an_attribute():
    html_text = page(Para('[docs](x" onmouseover="alert(1))'), Heading(2, '[t](a" onclick="b)'))
    assert "onmouseover" not in attributes(html_text) and "onclick" not in attributes(html_text)
    assert re.findall(r'<a href="([^"]*)">docs</a>', html_text) == ["x&quot; onmouseover=&quot;alert(1"]


@pytest.mark.parametrize("url", ["javascript:alert(1)", "JavaScript:alert(1)", " javascript:alert(1)",
                                 "java\tscript:alert(1)", "data:text/html,<script>alert(1)</script>",
                                 "vbscript:msgbox(1)", "file:///etc/passwd",
                                 # another host without a scheme: scheme-relative, or a backslash browsers read as /
                                 "//evil.example/x", "\\\\evil\\x", "/\\evil.example/x", "\\/evil.example/x",
                                 "/\t/evil.example/x", "tables\\..\\x.csv"])
def test_only_http_and_relative_links_become_links(url):
    html_text = page(Para(f"see [docs]({url})"), Bullets((f"[docs]({url})",)))
    assert "<a " not in html_text and "docs" in html_text


@pytest.mark.parametrize("url", ["https://example.org/a?b=1&c=2", "http://example.org", "tables/lr_table1.csv",
                                 "#cost", "../other/report.html"])
def test_http_and_relative_links_stay_links(url):
    html_text = page(Para(f"[docs]({url})"))
    assert re.findall(r'<a href="([^"]*)">docs</a>', html_text) == [url.replace("&", "&amp;")]


def test_every_text_is_escaped_title_headings_paragraphs_cells():
    evil = '<img src=x onerror="alert(1)">'
    html_text = page(Heading(1, evil), Para(f"**{evil}** `{evil}`"), Bullets((evil,)), Grid((evil,), ((evil,),)))
    assert "<img" not in html_text and "<script>" not in html_text
    assert html_text.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;") == 6
    assert "<title>study &quot;x&quot; &lt;script&gt;</title>" in html_text
