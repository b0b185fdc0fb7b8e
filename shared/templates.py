"""The sandbox that template mappings render in: no attribute escapes (Jinja's immutable
sandbox), nothing evaluated while compiling, every value a template makes and its whole output
bounded in size, each render bounded in time and loop steps, and a missing (NULL) value renders
as nothing.

How the bound holds: every value a call, filter, operator or concatenation makes is measured
and refused beyond MAX_VALUE_LENGTH, so the inputs of the next operation are bounded too; the
operations that can grow a value far past their inputs (a width, a repeat count, a batch or
slice count, `replace`, `join`, `%` and `format`) are checked before they run. Every output
piece, constant text included, passes `finalize` and counts towards the output limit."""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, wraps
from typing import Any

from jinja2 import Template, nodes, pass_environment
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.visitor import NodeTransformer

# A template builds one field value: no value it makes, nor its output, may be longer than
# this (characters of a string, items of a list, or both for nested values).
MAX_VALUE_LENGTH = 65_536
# One render (one record) may take this long, and run this many loop steps, at most.
MAX_RENDER_SECONDS = 1.0
MAX_LOOP_STEPS = 100_000
MAX_EXPONENT = 1_000
MAX_BITS = 4_096


class TemplateLimitError(SecurityError):
    """A template went past one of the limits above."""


def _too_large(what: str) -> TemplateLimitError:
    return TemplateLimitError(f"{what} would be longer than {MAX_VALUE_LENGTH} characters")


@dataclass
class _Budget:
    deadline: float
    steps: int = 0
    output: int = 0

    def tick(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > MAX_LOOP_STEPS:
            raise TemplateLimitError(f"the template ran more than {MAX_LOOP_STEPS} loop steps")
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"the template ran longer than {MAX_RENDER_SECONDS:g} s")


_budget: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def _tick(steps: int = 1) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.tick(steps)


def _size(value: Any, limit: int = MAX_VALUE_LENGTH) -> int:
    """The length of `value` counting the strings and items inside containers; stops counting
    once past `limit`, so measuring costs no more than the limit."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, range):
        return len(value)
    if isinstance(value, Mapping):
        items: Iterable[Any] = (part for pair in value.items() for part in pair)
        total = len(value)
    elif isinstance(value, list | tuple | set | frozenset):
        items, total = value, len(value)
    else:
        return 0
    if total > limit:
        return total
    for item in items:
        total += _size(item, limit - total)
        if total > limit:
            break
    return total


def _bounded(value: Any) -> Any:
    if _size(value) > MAX_VALUE_LENGTH:
        raise _too_large("a value")
    return value


def _checked_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > MAX_VALUE_LENGTH:
        raise _too_large(f"{what} of width {width}")


# %-format conversions: mapping key, flags, width, precision, length modifier, type.
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)


def _check_percent_format(text: str) -> None:
    for width, precision, _ in _PERCENT_SPEC.findall(text):
        for number in (width, precision):
            if number == "*":
                raise TemplateLimitError("a * width or precision is not allowed in templates")
            if number and int(number) > MAX_VALUE_LENGTH:
                raise _too_large(f"a conversion of width {number}")


# str.format field specs: fill and align, sign, z, #, 0, width, grouping, precision.
_FORMAT_SPEC = re.compile(r"^(?:.?[<>=^])?[+\- ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?")


class _BoundedFormatter(SandboxedFormatter):
    """`str.format` in the sandbox, refusing a width or precision past the limit before the
    field is formatted."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        match = _FORMAT_SPEC.match(format_spec)
        if match:
            for number in match.groups():
                if number and int(number) > MAX_VALUE_LENGTH:
                    raise _too_large(f"a field of width {number}")
        _tick()
        return _bounded(super().format_field(value, format_spec))


def _checked_replace(text: str, old: str, new: str, count: int | None = None) -> None:
    occurrences = len(text) + 1 if old == "" else text.count(old)
    if count is not None and count >= 0:
        occurrences = min(occurrences, count)
    if len(text) + occurrences * (len(new) - len(old)) > MAX_VALUE_LENGTH:
        raise _too_large("the replaced text")


def _checked_join(separator: str, items: list[Any]) -> None:
    total = len(separator) * max(0, len(items) - 1)
    for item in items:
        total += _size(item) if isinstance(item, str) else _size(item) + 8
        if total > MAX_VALUE_LENGTH:
            raise _too_large("the joined text")


# str methods a template may call, each with the check that must pass before it runs; the
# others make a value no longer than their inputs (or are refused: translate, maketrans).
_STR_CHECKS: dict[str, Callable[..., None]] = {
    "center": lambda s, width, *_: _checked_width(width, "center"),
    "ljust": lambda s, width, *_: _checked_width(width, "ljust"),
    "rjust": lambda s, width, *_: _checked_width(width, "rjust"),
    "zfill": lambda s, width: _checked_width(width, "zfill"),
    "expandtabs": lambda s, tabsize=8: _checked_width(
        s.count("\t") * tabsize + len(s) if isinstance(tabsize, int) else 0, "expandtabs"
    ),
    "replace": _checked_replace,
    "join": lambda s, items: None,  # checked in `call`, where the items are materialized
}
_STR_REFUSED = frozenset({"translate", "maketrans"})


class _NoFolding(CodeGenerator):
    """Jinja evaluates an output's constant parts while compiling, outside every runtime check
    (`{{ "x"|center(400000000) }}` would be computed when the sync is saved): never here."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        raise nodes.Impossible()


class _Guards(NodeTransformer):
    """Rewrites a parsed template so its loops tick the render's budget and its `~`
    concatenations are measured."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_retl_steps", [], [], None, None,
                                 lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return nodes.Filter(node, "_retl_bounded", [], [], None, None, lineno=node.lineno)


def _steps(iterable: Any) -> Iterator[Any]:
    for item in iterable:
        _tick()
        yield item


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A builtin filter that checks what would grow past the limit before it runs, ticks the
    budget, and measures its result."""
    # Filters marked pass_environment / pass_eval_context / pass_context get that first.
    passes_first = getattr(function, "jinja_pass_arg", None) is not None

    first = 1 if passes_first else 0

    @wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if name == "join" and len(args) > first and isinstance(args[first], Iterable):
            # Measured before joining, then joined: an iterator is read once.
            args = (*args[:first], list(args[first]), *args[first + 1:])
        _check_filter(name, args[first:], kwargs)
        return _bounded(function(*args, **kwargs))

    return guarded


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _check_filter(name: str, args: tuple, kwargs: dict) -> None:
    """The checks of the builtin filters that can make a value much longer than their
    inputs; `args` starts with the filtered value."""
    if not args:
        return
    value = args[0]
    if name == "center":
        _checked_width(_argument(args, kwargs, 1, "width", 80), "center")
    elif name == "indent":
        width = _argument(args, kwargs, 1, "width", 4)
        size = len(width) if isinstance(width, str) else width
        text = str(value)
        if isinstance(size, int) and size * (text.count("\n") + 1) + len(text) > MAX_VALUE_LENGTH:
            raise _too_large("the indented text")
    elif name == "replace" and len(args) >= 3:
        count = _argument(args, kwargs, 3, "count", None)
        _checked_replace(str(value), str(args[1]), str(args[2]), count)
    elif name == "format":
        _check_percent_format(str(value))
    elif name == "batch":
        _checked_width(_argument(args, kwargs, 1, "linecount", 0), "a batch")
    elif name == "slice":
        _checked_width(_argument(args, kwargs, 1, "slices", 0), "a slice")
    elif name == "join" and isinstance(value, Iterable):
        _checked_join(str(_argument(args, kwargs, 1, "d", "")), list(value))


@pass_environment
def _finalize(environment: Any, value: Any) -> str:
    text = "" if value is None else str(value)
    budget = _budget.get()
    if budget is not None:
        budget.output += len(text)
        if budget.output > MAX_VALUE_LENGTH:
            raise _too_large("the template's output")
        budget.tick(0)
    elif len(text) > MAX_VALUE_LENGTH:
        raise _too_large("the template's output")
    return text


class BoundedSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _NoFolding
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(autoescape=False, optimized=False, finalize=_finalize)
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}
        self.filters["_retl_steps"] = _steps
        self.filters["_retl_bounded"] = _bounded
        # Placeholder text has no place in a field value, and lipsum(n) makes n paragraphs.
        self.globals.pop("lipsum", None)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _Guards().visit(super()._parse(source, name, filename))

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        _tick()
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise TemplateLimitError(f"exponent {right} is larger than {MAX_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_BITS:
                raise TemplateLimitError("the number is too large")
            result = operator.pow(left, right)
        elif operator_name == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    if _size(sequence) * times > MAX_VALUE_LENGTH:
                        raise _too_large("the repeated value")
            result = operator.mul(left, right)
        elif operator_name == "%":
            if isinstance(left, str):
                _check_percent_format(left)
            result = operator.mod(left, right)
        else:
            result = operator.add(left, right)
        if isinstance(result, int) and result.bit_length() > MAX_BITS:
            raise TemplateLimitError("the number is too large")
        return _bounded(result)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        owner = getattr(__obj, "__self__", None)
        method = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if method in _STR_REFUSED:
                raise SecurityError(f"str.{method} is not allowed in templates")
            check = _STR_CHECKS.get(method)
            if method == "join" and args:
                items = list(args[0])
                _checked_join(owner, items)
                args = (items, *args[1:])
            elif check is not None:
                check(owner, *args, **kwargs)
        return _bounded(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text, is_format_map = value.__self__, value.__name__ == "format_map"
        formatter = _BoundedFormatter(self)

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return _bounded(formatter.vformat(text, args, kwargs))

        return bounded_format

    def format_string(self, s: str, args: tuple, kwargs: dict, format_func: Any = None) -> str:
        return _bounded(_BoundedFormatter(self).vformat(s, args, kwargs))


@cache
def environment() -> BoundedSandbox:
    return BoundedSandbox()


def compile_template(text: str) -> Template:
    """The compiled template; jinja2's TemplateSyntaxError (or SecurityError) when it is not
    a valid one. Compiling evaluates nothing."""
    return environment().from_string(text)


def render(template: Template, values: Mapping[str, Any]) -> str:
    """The template's output for one row, within the limits; TemplateLimitError past one."""
    token = _budget.set(_Budget(time.monotonic() + MAX_RENDER_SECONDS))
    try:
        return "".join(template.generate(values))
    finally:
        _budget.reset(token)


def check_template(text: str) -> Template:
    """`compile_template`, and a trial render on a row of NULLs, for a template about to be
    saved: one that goes past a limit even then (`{{ "x"|center(400000000) }}`) is refused
    now rather than failing every record. Other errors of the trial (a NULL where the template
    wants a value) are the rows' to have."""
    template = compile_template(text)
    try:
        render(template, {})
    except TemplateLimitError:
        raise
    except Exception:  # noqa: BLE001 - data-dependent; each row is rendered at run time
        return template
    return template

