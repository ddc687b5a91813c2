"""How layers print: ``repr(net)`` / ``print(net)`` gives PyTorch's nested view (each
layer with its settings, parameter shapes and parameter count), ``net.summary(x)``
Keras' table with the output shape of every layer for an example input.

>>> import numpy as np, gpugrad as gg
>>> net = gg.nn.Sequential(
...     gg.nn.Dense(4, 3, activation=gg.relu, dtype=np.float64),
...     gg.nn.Dense(3, 2, dtype=np.float64),
... )
>>> print(net)
Sequential(
  (0): Dense(weight=(3, 4), bias=(3,), activation=relu)  # 15 parameters
  (1): Dense(weight=(2, 3), bias=(2,))  # 8 parameters
)  # 23 parameters in total
>>> print(net.summary(input_shape=(5, 4)))
Layer (type)    Output shape    Parameters
==========================================
Sequential      (5, 2)                  23
  0 (Dense)     (5, 3)                  15
  1 (Dense)     (5, 2)                   8
==========================================
Total parameters: 23 (float64)
"""

from __future__ import annotations

import numpy as np

from ..array import dlarray
from ..tree import leaves


def _layer_type():
    from .layers import Layer  # noqa: PLC0415  (layers imports this module)

    return Layer


def count_parameters(layer):
    """The number of scalar parameters of a layer (or a parameter tree).

    >>> import gpugrad as gg
    >>> gg.nn.summary.count_parameters(gg.nn.Dense(4, 3))
    15
    """
    params = layer.parameters() if isinstance(layer, _layer_type()) else layer
    return int(sum(p.size for p in leaves(params)))


def _function_name(fn):
    name = getattr(fn, "__name__", None)
    return name if name and name != "<lambda>" else type(fn).__name__


def _value_text(value):
    """A short text for a setting, or None when it is not one to show."""
    if isinstance(value, (bool, int, float, str, np.generic)):
        return repr(value.item() if isinstance(value, np.generic) else value)
    if isinstance(value, tuple) and all(isinstance(v, (int, float, str)) for v in value):
        return repr(value)
    if isinstance(value, np.dtype):
        return str(value)
    if callable(value) and not isinstance(value, _layer_type()):
        return _function_name(value)
    return None


def children(layer):
    """``(name, child)`` for each sub-layer or function held in a list of layers, in
    attribute order; a list attribute named ``layers`` gives names ``"0"``, ``"1"``..."""
    layer_type = _layer_type()
    out = []
    for attr, value in vars(layer).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, layer_type):
            out.append((attr, value))
        elif isinstance(value, (list, tuple, dict)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            entries = [(str(k), v) for k, v in items]
            if any(isinstance(v, layer_type) for _, v in entries) or attr == "layers":
                for k, v in entries:
                    if isinstance(v, layer_type) or callable(v):
                        out.append((k if attr == "layers" else f"{attr}.{k}", v))
    return out


def _settings(layer):
    layer_type = _layer_type()
    parts = []
    for attr, value in vars(layer).items():
        if attr.startswith("_") or isinstance(value, layer_type):
            continue
        if type(value) is dlarray:
            if value.dtype.kind in "fc":
                parts.append(f"{attr}={value.shape}")
            continue
        text = _value_text(value)
        if text is not None:
            parts.append(f"{attr}={text}")
    return ", ".join(parts)


def _plural(n):
    return f"{n:,} parameter{'s' if n != 1 else ''}"


def _lines(layer, indent):
    kids = children(layer)
    settings = _settings(layer)
    n = count_parameters(layer)
    name = type(layer).__name__
    if not kids:
        return [f"{name}({settings})" + (f"  # {_plural(n)}" if n else "")]
    pad = "  " * (indent + 1)
    lines = [f"{name}("]
    if settings:
        lines.append(pad + settings)
    for child_name, child in kids:
        if isinstance(child, _layer_type()):
            sub = _lines(child, indent + 1)
            lines.append(f"{pad}({child_name}): {sub[0]}")
            lines.extend(sub[1:])
        else:
            lines.append(f"{pad}({child_name}): {_function_name(child)}")
    lines.append("  " * indent + ")" + (f"  # {_plural(n)}" if indent and n else ""))
    return lines


def layer_repr(layer):
    """The nested view ``print(layer)`` shows (PyTorch's style): each layer with its
    settings and parameter shapes, a container with its sub-layers, one per line, and
    the parameter counts."""
    lines = _lines(layer, 0)
    if children(layer):
        lines[-1] += f"  # {_plural(count_parameters(layer))} in total"
    return "\n".join(lines)


def _shape_text(out):
    if type(out) is dlarray or hasattr(out, "shape"):
        return str(tuple(out.shape))
    if isinstance(out, (tuple, list)):
        return ", ".join(_shape_text(o) for o in out)
    return "?"


def _recorder(original, key, shapes):
    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        shapes[key] = _shape_text(out)
        return out

    return recording


def _record_shapes(layer, x):
    """Run ``layer`` on ``x`` in inference mode, noting every sub-layer's output shape."""
    layer_type = _layer_type()
    shapes = {}
    patched = []
    stack = [layer]
    seen = set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        stack.extend(c for _, c in children(current) if isinstance(c, layer_type))
        # why: an instance attribute shadows the class's forward for this run only;
        # the layer classes are left untouched
        name = "_forward_impl" if hasattr(type(current), "_forward_impl") else "forward"
        current.__dict__[name] = _recorder(getattr(current, name), id(current), shapes)
        patched.append((current, name))
    try:
        run = getattr(layer, "predict", None) or layer
        run(x)
    finally:
        for current, name in patched:
            del current.__dict__[name]
    return shapes


def summary_table(layer, x=None, *, input_shape=None):
    """Keras' ``model.summary()``: one row per layer (nested layers indented) with its
    type, its output shape for the input ``x`` (or zeros of ``input_shape``, in the
    parameters' dtype; shapes are left out when neither is given) and its parameter
    count including sub-layers. Runs the layer once, in inference mode."""
    if x is not None and input_shape is not None:
        raise ValueError("summary: give x or input_shape, not both")
    shapes = {}
    if input_shape is not None:
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"summary: input_shape must be a tuple of integers, got {input_shape!r}"
            ) from None
        params = leaves(layer.parameters())
        dtype = params[0].dtype if params else np.float64
        from ..creation import zeros  # noqa: PLC0415

        x = zeros(shape, dtype=dtype)
    if x is not None:
        shapes = _record_shapes(layer, x)
    rows = []
    layer_type = _layer_type()

    def visit(label, current, depth):
        if isinstance(current, layer_type):
            rows.append((label, shapes.get(id(current), ""), count_parameters(current)))
            for child_name, child in children(current):
                kind = type(child).__name__ if isinstance(child, layer_type) else None
                kind = kind or _function_name(child)
                visit(f"{'  ' * (depth + 1)}{child_name} ({kind})", child, depth + 1)
        else:
            rows.append((label, "", 0))

    visit(type(layer).__name__, layer, 0)
    headers = ("Layer (type)", "Output shape", "Parameters")
    width0 = max(len(headers[0]), *(len(r[0]) for r in rows)) + 4
    width1 = max(len(headers[1]), *(len(r[1]) for r in rows)) + 4
    width2 = max(len(headers[2]), *(len(f"{r[2]:,}") for r in rows))
    rule = "=" * (width0 + width1 + width2)
    out = [f"{headers[0]:<{width0}}{headers[1]:<{width1}}{headers[2]:>{width2}}", rule]
    for label, shape, n in rows:
        out.append(f"{label:<{width0}}{shape:<{width1}}{n:>{width2},}")
    out.append(rule)
    dtypes = sorted({str(p.dtype) for p in leaves(layer.parameters())})
    kinds = f" ({', '.join(dtypes)})" if dtypes else ""
    out.append(f"Total parameters: {count_parameters(layer):,}{kinds}")
    return "\n".join(out)
