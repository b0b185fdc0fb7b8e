"""The template sandbox: ordinary templates render; resource-hungry ones are refused."""

from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError, TemplateSyntaxError

from shared.templates import compile_template


def test_a_null_value_renders_as_nothing():
    assert compile_template("{{ first }} {{ last }}").render(first="Ada", last=None) == "Ada "


def test_ordinary_arithmetic_and_filters_work():
    assert compile_template("{{ (n * 2) ** 2 }}|{{ name | upper }}|{{ 'ab' * 2 }}").render(
        n=3, name="x"
    ) == "36|X|abab"


@pytest.mark.parametrize("template", [
    "{{ 'a' * 10**8 }}",
    "{{ [1] * 10**7 }}",
    "{{ 2 ** 100000 }}",
    "{{ (10 ** 900) ** 900 }}",
])
def test_templates_that_would_exhaust_a_worker_are_refused(template):
    with pytest.raises(SecurityError):
        compile_template(template).render()


def test_attribute_escapes_are_refused_by_the_sandbox():
    with pytest.raises(SecurityError):
        compile_template("{{ ''.__class__.__mro__[1].__subclasses__() }}").render()


def test_a_template_that_does_not_parse_is_refused_at_compile_time():
    with pytest.raises(TemplateSyntaxError):
        compile_template("{{ name ")
