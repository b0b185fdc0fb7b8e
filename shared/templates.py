"""The sandbox that template mappings render in: no attribute escapes (Jinja's sandbox), no
giant strings or numbers from `*` and `**`, and a missing (NULL) value renders as nothing."""

from __future__ import annotations

import operator
from functools import cache
from typing import Any

from jinja2 import Template
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

# A template builds one field value: nothing it makes needs to be larger than this.
MAX_RESULT_LENGTH = 100_000
MAX_EXPONENT = 1_000
MAX_BITS = 4_096


class BoundedSandbox(SandboxedEnvironment):
    # Intercepted operators are also never folded at compile time, so a constant like
    # 9**9**9 cannot hang the compiler either.
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than {MAX_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_BITS:
                raise SecurityError("the number is too large")
            result = operator.pow(left, right)
        else:
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    if len(sequence) * times > MAX_RESULT_LENGTH:
                        raise SecurityError("the repeated value would be too large")
            result = operator.mul(left, right)
        if isinstance(result, int) and result.bit_length() > MAX_BITS:
            raise SecurityError("the number is too large")
        return result


@cache
def environment() -> BoundedSandbox:
    return BoundedSandbox(autoescape=False, finalize=lambda value: "" if value is None else value)


def compile_template(text: str) -> Template:
    """The compiled template; jinja2's TemplateSyntaxError (or SecurityError) when it is not
    a valid one."""
    return environment().from_string(text)
