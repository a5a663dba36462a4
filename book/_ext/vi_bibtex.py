"""Citations and bibliography in Vietnamese, for sphinxcontrib-bibtex.

- Labels are author–year, the same in the text and in the list: ``[Hinton và cộng sự, 2015]``,
  ``[Frantar và Alistarh, 2023]``, ``[DeepSeek-AI, 2025]``; two works that would get the same
  label get ``2015a``, ``2015b`` in the order of the list.
- Names are joined with "và"; an ``and others`` in the .bib file reads "và cộng sự".
- Entries are sorted by author names with the braces of ``{DeepSeek-AI}`` ignored, then year
  and title; several citations in one bracket are separated by semicolons.
- An ``eprint`` field renders as a link to the arXiv abstract (pybtex's ``format_web_refs``).

Use with ``bibtex_default_style = "vi"`` and ``bibtex_reference_style = "vi_label"``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from string import ascii_lowercase

import pybtex.plugin
from pybtex.database import Entry, Person
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle as AuthorYearTitleSorting
from pybtex.style.template import FieldIsMissing, join, node, sentence
from sphinx.application import Sphinx
from sphinxcontrib.bibtex.plugin import register_plugin
from sphinxcontrib.bibtex.style.referencing import BracketStyle, PersonStyle
from sphinxcontrib.bibtex.style.referencing.label import LabelReferenceStyle

AND = " và "
OTHERS = "cộng sự"


def plain(latex: str) -> str:
    """``{DeepSeek-AI}`` -> ``DeepSeek-AI``: the text of a BibTeX name part."""
    return Text.from_latex(latex).render_as("text")


def is_others(person: Person) -> bool:
    return [p.lower() for p in person.last_names] == ["others"] and not person.first_names


def surname(person: Person) -> str:
    return plain(" ".join(person.prelast_names + person.last_names))


def label_base(entry: Entry) -> str:
    """``Han và cộng sự, 2015`` before disambiguation."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    if not persons:
        names = plain(entry.fields.get("title", entry.key))
    elif len(persons) == 1:
        names = surname(persons[0])
    elif len(persons) == 2:
        names = surname(persons[0]) + AND + (OTHERS if is_others(persons[1]) else surname(persons[1]))
    else:
        names = surname(persons[0]) + AND + OTHERS
    return f"{names}, {entry.fields.get('year', 'không rõ năm')}"


class AuthorYearLabels(BaseLabelStyle):
    """Author–year labels, with a, b, … appended to the year where two entries would collide."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        bases = [label_base(e) for e in entries]
        count = Counter(bases)
        seen: Counter = Counter()
        for base in bases:
            if count[base] == 1:
                yield base
            else:
                yield base + ascii_lowercase[seen[base]]
                seen[base] += 1


class AuthorYearTitleSortingPlain(AuthorYearTitleSorting):
    """pybtex's author–year–title order, comparing the text of names, not their braces."""

    def person_key(self, person: Person) -> str:
        return "  ".join((surname(person), plain(" ".join(person.first_names + person.middle_names)))).lower()


@node
def vietnamese_names(children, data, role):
    """The persons of ``role``, full names joined with commas and "và"; ``others`` reads "cộng sự"."""
    assert not children
    style = data["style"]
    try:
        persons = data["entry"].persons[role]
    except KeyError:
        raise FieldIsMissing(role, data["entry"]) from None
    parts = [Text(OTHERS) if is_others(p) else style.format_name(p, style.abbreviate_names) for p in persons]
    return join(sep=", ", sep2=AND, last_sep=AND)[parts].format_data(data)


class VietnameseStyle(UnsrtStyle):
    """pybtex's unsrt entries with Vietnamese connectors, author–year labels and brace-free sorting."""

    default_label_style = "vi-author-year"
    default_sorting_style = "vi-author-year-title"

    def format_names(self, role, as_sentence=True):
        names = vietnamese_names(role)
        return sentence[names] if as_sentence else names


@dataclass
class VietnameseLabelReferences(LabelReferenceStyle):
    """``[label]`` citations; several labels in one bracket separated by semicolons (labels hold commas)."""

    bracket_parenthetical: BracketStyle = field(default_factory=lambda: BracketStyle(sep="; ", sep2="; ", last_sep="; "))
    bracket_textual: BracketStyle = field(default_factory=lambda: BracketStyle(sep="; ", sep2="; ", last_sep="; "))
    person: PersonStyle = field(default_factory=lambda: PersonStyle(sep2=AND, last_sep=AND, other=Text(AND, OTHERS)))


def setup(app: Sphinx) -> dict[str, object]:
    pybtex.plugin.register_plugin("pybtex.style.labels", "vi-author-year", AuthorYearLabels)
    pybtex.plugin.register_plugin("pybtex.style.sorting", "vi-author-year-title", AuthorYearTitleSortingPlain)
    pybtex.plugin.register_plugin("pybtex.style.formatting", "vi", VietnameseStyle)
    register_plugin("sphinxcontrib.bibtex.style.referencing", "vi_label", VietnameseLabelReferences)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
