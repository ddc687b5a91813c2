"""Saving and loading: ``gg.save(obj, path)`` and ``gg.load(path)``.

What can be saved: a ``gg.nn.Layer`` (with its sub-layers, settings, parameters and
buffers such as BatchNorm's running statistics), a tree of dlarrays / arrays
(dicts, lists, tuples), an optimizer (``gg.optim.SGD``, ``Adam``, ``AdamW``,
``RMSProp``: its settings, schedule and state) or its ``state_dict()``, and any
dict/list/tuple mixing these with numbers and strings (a training checkpoint).

The format is a plain ``.npz`` archive (NumPy's zip of ``.npy`` files) readable
without gpugrad and without pickle: every array is one entry ``a0``, ``a1``, ...,
stored as a host (NumPy) array; the entry ``__gpugrad__`` holds a UTF-8 JSON header
(as uint8 bytes) describing the object::

    {"format": "gpugrad", "version": 1, "kind": "layer" | "optimizer" | "tree",
     "root": <value>}

where a value is a JSON number, string, boolean, null or list, or one of
``{"$dict": {...}}`` (string keys), ``{"$items": [[key, value], ...]}`` (other
keys), ``{"$tuple": [...]}``, ``{"$dlarray": "a0", "fmt": "SSCB"}``,
``{"$ndarray": "a1"}``, ``{"$scalar": 1.5, "dtype": "float32"}``,
``{"$complex": [re, im]}``, ``{"$dtype": "float32"}``, ``{"$function": "relu"}``
(a gpugrad function, by name), ``{"$schedule": {...}}`` (a ``gg.optim`` schedule),
``{"$optimizer": <state_dict>}``, ``{"$layer": "Dense", "module": "...", "id": 3,
"attrs": {...}}`` (a layer: its class name and its attributes) and ``{"$ref": 3}``
(the same layer again). A dlarray that appears twice (shared weights) is stored
once and loads as one dlarray.

No code is stored. A layer is rebuilt from its class name, looked up among the
``gg.nn`` layers or in ``classes=`` (your own Layer subclasses), and its attributes,
without calling ``__init__``. Arrays load onto the active device (a model saved on
cuda loads on cpu and the other way round).

>>> import os, tempfile
>>> import numpy as np, gpugrad as gg
>>> net = gg.nn.Sequential(gg.nn.Dense(3, 4, activation=gg.relu), gg.nn.Dense(4, 2))
>>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
>>> gg.save(net, path)
>>> same = gg.load(path)
>>> x = np.ones((5, 3))
>>> bool((same(x).numpy() == net(x).numpy()).all())
True
"""

from __future__ import annotations

import io as _pyio
import json
import os
import tempfile
import types
import zipfile

import numpy as np

from . import backend
from .array import dlarray
from .ops.core import _STATE, make

FORMAT = "gpugrad"
VERSION = 1
HEADER = "__gpugrad__"


def _xp():
    return _STATE["xp"]


def _path_text(path):
    """``obj.layers[2].weight``: layer attributes are stored in paths as ``".name"``."""
    return "obj" + "".join(
        k if isinstance(k, str) and k.startswith(".") else f"[{k!r}]" for k in path
    )


# ------------------------------------------------------------------ writing


class _Writer:
    def __init__(self):
        self.arrays = {}
        self.array_ids = {}  # id(dlarray or ndarray) -> key
        self.layer_ids = {}  # id(layer) -> number
        self.keep = []  # keep encoded objects alive so ids stay unique

    def _array(self, raw, owner):
        key = self.array_ids.get(id(owner))
        if key is None:
            key = f"a{len(self.arrays)}"
            self.arrays[key] = np.ascontiguousarray(backend.to_host(raw))
            self.array_ids[id(owner)] = key
            self.keep.append(owner)
        return key

    def encode(self, value, path):
        from . import optim  # noqa: PLC0415
        from .nn.layers import Layer  # noqa: PLC0415

        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, np.generic):
            return value
        if isinstance(value, complex):
            return {"$complex": [value.real, value.imag]}
        if type(value) is dlarray:
            return {"$dlarray": self._array(value._data, value), "fmt": value._fmt}
        if isinstance(value, np.ndarray) or backend.is_device_array(value):
            return {"$ndarray": self._array(value, value)}
        if isinstance(value, np.generic):
            item = value.item()
            if isinstance(item, complex):
                item = [item.real, item.imag]
            return {"$scalar": item, "dtype": str(value.dtype)}
        if isinstance(value, np.dtype):
            return {"$dtype": str(value)}
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {"$tuple": [self.encode(v, (*path, i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {"$dict": {k: self.encode(v, (*path, k)) for k, v in value.items()}}
            return {
                "$items": [
                    [self.encode(k, (*path, "<key>")), self.encode(v, (*path, k))]
                    for k, v in value.items()
                ]
            }
        if isinstance(value, Layer):
            number = self.layer_ids.get(id(value))
            if number is not None:
                if number < 0:
                    raise ValueError(
                        f"gg.save: the layer at {_path_text(path)} contains itself; a layer "
                        "tree must not have cycles"
                    )
                return {"$ref": number}
            number = len(self.layer_ids)
            self.layer_ids[id(value)] = -1  # in progress
            self.keep.append(value)
            attrs = {k: self.encode(v, (*path, "." + k)) for k, v in vars(value).items()}
            self.layer_ids[id(value)] = number
            cls = type(value)
            return {
                "$layer": cls.__qualname__,
                "module": cls.__module__,
                "id": number,
                "attrs": attrs,
            }
        if isinstance(value, optim.LearningRateSchedule):
            return {"$schedule": value.config()}
        if isinstance(value, optim._Optimizer):
            return {"$optimizer": self.encode(value.state_dict(), path)}
        if callable(value):
            name = _gpugrad_function_name(value)
            if name is not None:
                return {"$function": name}
            raise TypeError(
                f"gg.save: cannot store the function {getattr(value, '__name__', value)!r} at "
                f"{_path_text(path)}: only gpugrad's own functions (gg.relu, gg.tanh, ...) are "
                "stored, by name, since no code goes into the file"
            )
        raise TypeError(
            f"gg.save: cannot store a value of type {type(value).__name__} at {_path_text(path)}; "
            "a file holds "
            "layers, dlarrays, NumPy/CuPy arrays, optimizers, numbers, strings and "
            "dicts/lists/tuples of them"
        )


# why: a file names functions, never code; only array functions are looked up, so a
# crafted file cannot make a layer call gg.save, gg.set_device or the like
_FUNCTION_MODULES = ("gpugrad.ops", "gpugrad.nn", "gpugrad.functional")


def _stored_function(name):
    """The gpugrad array function called ``name`` (``gg.relu``, ``gg.nn.gelu``), or None."""
    import gpugrad  # noqa: PLC0415

    for space in (gpugrad, gpugrad.nn):
        fn = getattr(space, name, None)
        module = getattr(fn, "__module__", None) or ""
        if callable(fn) and not isinstance(fn, type) and module.startswith(_FUNCTION_MODULES):
            return fn
    return None


def _gpugrad_function_name(fn):
    name = getattr(fn, "__name__", None)
    return name if name and _stored_function(name) is fn else None


def save(obj, path):
    """Write ``obj`` (a Layer, an optimizer or its ``state_dict()``, a tree of
    arrays, or a dict/list/tuple of those with numbers and strings) to ``path`` as an
    ``.npz`` archive with a JSON header (see :mod:`gpugrad.io` for the format).
    Arrays are copied to the host, so the file loads on any device. The file is
    written whole or not at all (a temporary file renamed into place). Returns None.

    >>> import os, tempfile, gpugrad as gg
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> gg.save({"w": gg.dlarray([1.0, 2.0]), "step": 3}, path)
    >>> gg.load(path)["step"]
    3
    """
    from . import optim  # noqa: PLC0415
    from .nn.layers import Layer  # noqa: PLC0415

    path = os.fspath(path)
    writer = _Writer()
    root = writer.encode(obj, ())
    if isinstance(obj, Layer):
        kind = "layer"
    elif isinstance(obj, optim._Optimizer):
        kind = "optimizer"
    else:
        kind = "tree"
    header = {"format": FORMAT, "version": VERSION, "kind": kind, "root": root}
    text = json.dumps(header, separators=(",", ":"))
    entries = dict(writer.arrays)
    entries[HEADER] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gg-save-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------ reading


def _layer_classes(classes):
    from . import nn  # noqa: PLC0415
    from .nn import layers as layer_module  # noqa: PLC0415
    from .nn.layers import Layer  # noqa: PLC0415

    table = {}
    for space in (layer_module, nn):
        for value in vars(space).values():
            if isinstance(value, type) and issubclass(value, Layer):
                table[value.__qualname__] = value
    if classes is None:
        return table
    if isinstance(classes, dict):
        items = classes.items()
    else:
        try:
            items = [(c.__qualname__, c) for c in classes]
        except (TypeError, AttributeError):
            raise TypeError(
                "gg.load: classes must be a dict name -> Layer subclass or a list of Layer "
                f"subclasses, got {type(classes).__name__}"
            ) from None
    for name, cls in items:
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(
                f"gg.load: classes[{name!r}] must be a gg.nn.Layer subclass, got {cls!r}"
            )
        table[name] = cls
    return table


class _Reader:
    def __init__(self, archive, path, classes, lenient=False):
        self.lenient = lenient  # unknown layer classes load as plain namespaces (into=)
        self.archive = archive
        self.path = path
        self.classes = classes
        self.cache = {}
        self.layers = {}

    def _corrupt(self, what):
        return ValueError(f"gg.load: {self.path} is corrupted: {what}")

    def _raw(self, key):
        if key not in self.cache:
            if not isinstance(key, str) or key not in self.archive.files:
                raise self._corrupt(f"the header names an array {key!r} that is not in the file")
            self.cache[key] = _xp().asarray(self.archive[key])
        return self.cache[key]

    def decode(self, value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict) or len(value) == 0:
            raise self._corrupt(f"unexpected entry {value!r} in the header")
        tag = next(iter(value))
        body = value[tag]
        if tag == "$dict":
            return {k: self.decode(v) for k, v in body.items()}
        if tag == "$items":
            return {_hashable(self.decode(k)): self.decode(v) for k, v in body}
        if tag == "$tuple":
            return tuple(self.decode(v) for v in body)
        if tag == "$dlarray":
            key = ("dl", body)
            if key not in self.cache:  # one dlarray per stored array (shared weights)
                self.cache[key] = make(self._raw(body), value.get("fmt", ""))
            return self.cache[key]
        if tag == "$ndarray":
            return self._raw(body)
        if tag == "$scalar":
            dt = np.dtype(value["dtype"])
            return dt.type(complex(*body) if dt.kind == "c" else body)
        if tag == "$complex":
            return complex(*body)
        if tag == "$dtype":
            return np.dtype(body)
        if tag == "$function":
            return self._function(body)
        if tag == "$schedule":
            from .optim import LearningRateSchedule  # noqa: PLC0415

            return LearningRateSchedule.from_config(body)
        if tag == "$optimizer":
            return _optimizer_from_state(self.decode(body))
        if tag == "$layer":
            return self._layer(value)
        if tag == "$ref":
            if body not in self.layers:
                raise self._corrupt(f"a reference to layer {body} that comes before it")
            return self.layers[body]
        raise self._corrupt(f"unknown entry kind {tag!r} in the header")

    def _function(self, name):
        fn = _stored_function(name) if isinstance(name, str) else None
        if fn is None:
            raise ValueError(
                f"gg.load: {self.path} names the function {name!r}, which is not an array "
                "function of this version of gpugrad"
            )
        return fn

    def _layer(self, value):
        name = value["$layer"]
        cls = self.classes.get(name)
        if cls is None and self.lenient:
            cls = _StoredLayer
        if cls is None:
            raise ValueError(
                f"gg.load: {self.path} holds a layer of class {name!r} (module "
                f"{value.get('module')!r}), which is not a gg.nn layer; pass "
                f"classes=[{name.split('.')[-1]}] (your Layer subclass) to gg.load, or load "
                f"the parameters into a model you built: gg.load(path, into=model)"
            )
        layer = cls.__new__(cls)
        self.layers[value.get("id")] = layer
        attrs = value.get("attrs", {})
        if not isinstance(attrs, dict):
            raise self._corrupt(f"the attributes of layer {name!r} are not a dict")
        layer.__dict__.update({k: self.decode(v) for k, v in attrs.items()})
        return layer


class _StoredLayer(types.SimpleNamespace):
    """The attributes of a stored layer whose class is not known (``load(into=...)``)."""


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _optimizer_from_state(state):
    from . import optim  # noqa: PLC0415

    name = state.get("optimizer") if isinstance(state, dict) else None
    cls = getattr(optim, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, optim._Optimizer)):
        raise ValueError(f"gg.load: unknown optimizer {name!r} in the file")
    opt = cls(None)
    opt.load_state_dict(state)
    return opt


def _read(path, classes, lenient=False):
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        archive = np.load(_pyio.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(
            f"gg.load: {path} is not a file written by gg.save (not a readable .npz archive: {exc})"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile) or HEADER not in archive.files:
        raise ValueError(
            f"gg.load: {path} is not a file written by gg.save (no {HEADER!r} header entry); "
            "for a plain NumPy archive use numpy.load"
        )
    try:
        header = json.loads(archive[HEADER].tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
        raise ValueError(
            f"gg.load: {path} is corrupted: its header is not valid JSON ({exc})"
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or "root" not in header:
        raise ValueError(f"gg.load: {path} is corrupted: its header is not a gpugrad header")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(
            f"gg.load: {path} has format version {version!r}; this gpugrad reads versions up to "
            f"{VERSION} (upgrade gpugrad)"
        )
    reader = _Reader(archive, path, _layer_classes(classes), lenient)
    try:
        return header, reader.decode(header["root"])
    except (KeyError, TypeError, AttributeError, zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"gg.load: {path} is corrupted ({type(exc).__name__}: {exc})") from None


def load(path, *, into=None, classes=None):
    """Read what :func:`save` wrote; arrays land on the active device.

    - A saved Layer comes back as a Layer of the same class with the same settings,
      parameters and buffers (``classes=[MyLayer]`` or ``{"MyLayer": MyLayer}`` for
      your own Layer subclasses: no code is stored, classes are found by name).
    - A saved optimizer comes back as an optimizer (settings, schedule, state); a
      ``state_dict()`` comes back as that dict (give it to ``opt.load_state_dict``).
    - A tree comes back as the same dicts/lists/tuples of dlarrays, arrays, numbers.

    ``into=model`` instead copies the file's parameters (and buffers such as
    BatchNorm's running statistics) into the existing ``model`` in place, checking
    that names and shapes match, and returns ``model``; ``into=optimizer`` loads an
    optimizer state into it. A file that gg.save did not write, or a damaged one,
    raises a ``ValueError`` that says so.
    """
    header, obj = _read(path, classes, lenient=into is not None)
    if into is None:
        return obj
    from . import optim  # noqa: PLC0415

    if isinstance(into, optim._Optimizer):
        state = obj.state_dict() if isinstance(obj, optim._Optimizer) else obj
        into.load_state_dict(state)
        return into
    _copy_into(into, obj, (), os.fspath(path))
    return into


def _copy_into(target, source, path, file):
    from .nn.layers import Layer  # noqa: PLC0415

    where = _path_text(path)
    if type(target) is dlarray:
        raw = source._data if type(source) is dlarray else source
        if not hasattr(raw, "shape"):
            raise ValueError(
                f"gg.load: {where} is a parameter of shape {target.shape}, but the file has "
                f"a {type(source).__name__} there"
            )
        if tuple(raw.shape) != target.shape:
            raise ValueError(
                f"gg.load: {where} has shape {target.shape} in the model but {tuple(raw.shape)} "
                f"in {file}"
            )
        target._data[...] = _xp().asarray(raw).astype(target.dtype, copy=False)
        return
    if hasattr(target, "shape") and hasattr(target, "dtype") and not isinstance(target, Layer):
        if hasattr(source, "shape") and tuple(source.shape) == tuple(target.shape):
            target[...] = _xp().asarray(source).astype(target.dtype, copy=False)
            return
        raise ValueError(f"gg.load: {where} does not match the array in {file}")
    if isinstance(target, Layer):
        stored = isinstance(source, (Layer, _StoredLayer))
        source_attrs = vars(source) if stored else None
        if source_attrs is None:
            if isinstance(source, dict):  # a parameter tree into a layer
                _copy_into(target.parameters(), source, path, file)
                return
            raise ValueError(
                f"gg.load: {where} is a {type(target).__name__} layer, but the file has a "
                f"{type(source).__name__} there"
            )
        for name, value in vars(target).items():
            if _holds_arrays(value):
                if name not in source_attrs:
                    raise ValueError(
                        f"gg.load: {_path_text((*path, '.' + name))} of the model is not in {file}"
                    )
                _copy_into(value, source_attrs[name], (*path, "." + name), file)
        return
    if isinstance(target, dict):
        if not isinstance(source, dict) or set(source) != set(target):
            got = sorted(source) if isinstance(source, dict) else type(source).__name__
            raise ValueError(
                f"gg.load: {where} has keys {sorted(target)} in the model but {got} in {file}"
            )
        for k, v in target.items():
            _copy_into(v, source[k], (*path, k), file)
        return
    if isinstance(target, (list, tuple)):
        if not isinstance(source, (list, tuple)) or len(source) != len(target):
            raise ValueError(
                f"gg.load: {where} has {len(target)} entries in the model but not in {file}"
            )
        for i, (t, s) in enumerate(zip(target, source)):
            _copy_into(t, s, (*path, i), file)


def _holds_arrays(value):
    from .nn.layers import Layer  # noqa: PLC0415

    if type(value) is dlarray or isinstance(value, Layer):
        return True
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_arrays(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_arrays(v) for v in value.values())
    return False


__all__ = ["save", "load"]
