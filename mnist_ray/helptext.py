"""Help that reads well: a flag is shown as a plain flag, a range as `1..10000`.

    import mnist_ray.helptext  # noqa: F401  (cli.py does; before the first --help)

Typer's rich help gives every option a type column, flags included (`--json <bool>`), and
prints ranges as `[0<=x<=9223372036854775807]`. Typer offers no setting for either, so its
two formatting methods are wrapped here, once, for this program's help only.
"""

from __future__ import annotations

from typer.core import TyperOption

_NAMED = {2**63 - 1: "2**63-1", 2**31 - 1: "2**31-1"}  # limits a reader knows by shape
_type_of = TyperOption.display_type_rich


def readable_range(low, high) -> str | None:
    def name(v):
        return _NAMED.get(v, f"{v:,}".replace(",", "_") if isinstance(v, int) else str(v))

    if low is None and high is None:
        return None
    if high is None:
        return f">={name(low)}"
    if low is None:
        return f"<={name(high)}"
    return f"{name(low)}..{name(high)}"


def _display_type(self, ctx):
    return None if self.is_flag else _type_of(self, ctx)


def _range(self):
    if getattr(self, "count", False) and self.min == 0 and self.max is None:
        return None
    return readable_range(getattr(self, "min", None), getattr(self, "max", None))


TyperOption.display_type_rich = _display_type
TyperOption._get_number_range_help_str = _range
