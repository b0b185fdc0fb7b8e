"""The template sandbox: ordinary templates render; resource-hungry ones are refused."""

from __future__ import annotations

import resource

import pytest
from jinja2.exceptions import SecurityError, TemplateSyntaxError

from shared.templates import (
    MAX_VALUE_LENGTH,
    TemplateLimitError,
    check_template,
    compile_template,
    render,
)


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


# -- bounded templates: no evaluation while compiling, every value and the output bounded ------


def _rendered(text: str, **values: object) -> str:
    return render(compile_template(text), values)


def test_compiling_evaluates_nothing():
    # Jinja folds constant output while compiling: this one would be a 400 MB string.
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    template = compile_template('{{ "x"|center(400000000) }}')
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024
    with pytest.raises(TemplateLimitError):
        render(template, {})


@pytest.mark.parametrize("template", [
    '{{ "x"|center(400000000) }}',
    '{{ "x".center(400000000) }}',
    '{{ "x".ljust(400000000) }}',
    '{{ "x".zfill(400000000) }}',
    '{{ "a\tb".expandtabs(400000000) }}',
    '{{ name|indent(400000000) }}',
    '{{ "%400000000s"|format(name) }}',
    '{{ "%400000000s" % name }}',
    '{{ "{:>400000000}".format(name) }}',
    '{{ "{:.400000000f}".format(1.5) }}',
    '{{ name|replace("", "x" * 60000) }}',
    '{{ ("x" * 60000, "y" * 60000)|join }}',
    '{{ "-".join(["x" * 60000, "y" * 60000]) }}',
    '{% set ns = namespace(v="aaaaaaaa") %}{% for i in range(40) %}'
    '{% set ns.v = ns.v|replace("a", "aa") %}{% endfor %}{{ ns.v|length }}',
    '{% set ns = namespace(v="a") %}{% for i in range(40) %}{% set ns.v = ns.v ~ ns.v %}'
    '{% endfor %}{{ ns.v|length }}',
    '{% set ns = namespace(v="a") %}{% for i in range(40) %}{% set ns.v = ns.v + ns.v %}'
    '{% endfor %}{{ ns.v|length }}',
    '{% for i in range(60000) %}abcdef{% endfor %}',
    '{% set v %}{% for i in range(60000) %}{{ name }}{% endfor %}{% endset %}{{ v|length }}',
    '{% for i in range(60000) %}{% for j in range(60000) %}{% endfor %}{% endfor %}',
    '{{ [name]|batch(400000000, "x")|list }}',
    '{{ [name]|slice(400000000)|list }}',
])
def test_a_template_past_a_limit_is_refused_before_it_grows(template):
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TemplateLimitError):
        _rendered(template, name="Ada Lovelace")
    # Refused before the value was made: the process did not grow by its size.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024


def test_a_template_within_the_limits_renders_as_before():
    assert _rendered(
        '{{ first }} {{ last|upper }}|{{ "%s-%05d"|format(first, 42) }}|{{ "{}/{}".format('
        'first, last) }}|{{ [first, last]|join(", ") }}|{{ first|center(7) }}|'
        '{{ last|replace("e", "E") }}|{% for c in first %}{{ c }}.{% endfor %}',
        first="Ada", last="Lovelace",
    ) == "Ada LOVELACE|Ada-00042|Ada/Lovelace|Ada, Lovelace|  Ada  |LovElacE|A.d.a."
    assert len(_rendered("{{ 'x' * (limit - 1) }}", limit=MAX_VALUE_LENGTH)) == MAX_VALUE_LENGTH - 1


def test_a_template_past_a_limit_even_without_data_is_refused_when_checked():
    with pytest.raises(TemplateLimitError):
        check_template('{{ "x"|center(400000000) }}')
    # Errors that depend on the row are left to each row.
    check_template("{{ price * 100 }}")
