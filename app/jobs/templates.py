"""Step prompts of an agent task: `{previous}` and `{stepN}` placeholders, checked and filled.

A step's prompt may name the output of the step just before it as `{previous}` and the output of any earlier
step N (1-based) as `{stepN}`. Literal braces are written doubled, `{{` and `}}` (Python `str.format`
syntax). Nothing else is allowed inside braces: no other names, no attribute or index access, no format specs
or conversions, so a prompt can never reach into Python objects.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_STEP_NAME = re.compile(r"step([1-9][0-9]*)")


def placeholders(template: str) -> list[str]:
    """The placeholder names used in a template, in order of appearance (repeats kept).

    Raises:
        ValueError: unbalanced braces, or a placeholder with a format spec or conversion (`{previous!r}`).
    """
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # "Single '}' encountered", "expected '}' before end of string"
        raise ValueError(f"{exc} (write literal braces as {{{{ and }}}})") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}} may not have a conversion or format spec")
        names.append(name)
    return names


def check_template(template: str, step: int) -> None:
    """Check that the prompt of step `step` (1-based) only names outputs of earlier steps.

    Raises:
        ValueError: `step N: ...` naming the unknown placeholder (or the brace problem).
    """
    try:
        for name in placeholders(template):
            _check_name(name, step)
    except ValueError as exc:
        raise ValueError(f"step {step}: {exc}") from None


def _check_name(name: str, step: int) -> None:
    if name == "previous":
        if step == 1:
            raise ValueError("{previous} names the output of the step before, but this is the first step")
        return
    m = _STEP_NAME.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown placeholder {{{name}}}: use {{previous}} or {{stepN}} for the output of "
                         "an earlier step (write literal braces as {{ and }})")
    if int(m.group(1)) >= step:
        raise ValueError(f"{{{name}}} names a step that has not run before step {step} "
                         f"(only step1..step{step - 1} can be used)")


def render(template: str, step: int, outputs: Sequence[str]) -> str:
    """The prompt of step `step` (1-based) with the placeholders filled from earlier steps' outputs.

    Args:
        template: the step's prompt.
        step: its 1-based number.
        outputs: the outputs of steps 1..step-1, in order.
    Raises:
        ValueError: as `check_template`, or when fewer than `step - 1` outputs are given.
    """
    check_template(template, step)
    if len(outputs) < step - 1:
        raise ValueError(f"step {step}: needs the outputs of {step - 1} earlier steps, got {len(outputs)}")
    values = {f"step{i}": text for i, text in enumerate(outputs[:step - 1], start=1)}
    if step > 1:
        values["previous"] = outputs[step - 2]
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(values[name])
    return "".join(parts)
