"""Immutable records for the hook's path: what typing.NamedTuple gives, without importing
typing (several milliseconds, a large part of the hook's budget)."""
from __future__ import annotations

from operator import itemgetter


def record(typename: str, fields: str, defaults: tuple = ()) -> type:
    names = tuple(fields.split())
    first_default = len(names) - len(defaults)

    def __new__(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        if len(args) > len(names):
            raise TypeError(f"{typename} takes {len(names)} fields, got {len(args)}")
        values = list(args)
        for i in range(len(args), len(names)):
            if names[i] in kwargs:
                values.append(kwargs.pop(names[i]))
            elif i >= first_default:
                values.append(defaults[i - first_default])
            else:
                raise TypeError(f"{typename} needs field {names[i]!r}")
        if kwargs:
            raise TypeError(f"{typename} has no field(s) {sorted(kwargs)}")
        return tuple.__new__(cls, values)

    namespace: dict = {
        "__slots__": (), "__new__": __new__, "_fields": names,
        "_asdict": lambda self: dict(zip(names, self)),
        "_replace": lambda self, **kw: type(self)(*[kw.pop(n, v) for n, v in zip(names, self)]),
        "__repr__": lambda self: f"{typename}({', '.join(f'{n}={v!r}' for n, v in zip(names, self))})",
        "__getnewargs__": lambda self: tuple(self),
    }
    for i, name in enumerate(names):
        namespace[name] = property(itemgetter(i))
    return type(typename, (tuple,), namespace)
