"""Training or inference: the learning phase that Dropout and BatchNorm follow.

Each face has its native switch, and all of them set one flag, the tape frame's
``training`` (``None`` while nobody chose):

==================  ==============================================  ==========================
face                training                                        inference
==================  ==============================================  ==========================
MATLAB              ``net.forward(x)``, ``gg.forward(net, x)``      ``net.predict(x)``,
                                                                    ``gg.predict(net, x)``
Swift               ``with gg.learning_phase("training"):``         ``("inference")``
MXNet               ``with gg.autograd.record():`` (train_mode)     ``record(train_mode=False)``,
                                                                    ``autograd.predict_mode()``
PyTorch habit       ``net.train()``                                 ``net.eval()``
==================  ==============================================  ==========================

A layer decides, first match wins:

1. the ``net.forward(x)`` / ``net.predict(x)`` call it runs in: ``predict``
   always infers (a teacher's ``predict`` inside a student's ``forward`` too);
   ``forward`` trains when called from outside any layer, while a layer's own code
   calling ``super().forward(x)`` or ``self.sub.forward(h)`` follows the phase
   that layer runs in;
2. its own mode, set by ``net.train()`` / ``net.eval()`` (``net.train(None)``
   hands the choice back to the context);
3. the innermost context: ``gg.learning_phase``, ``gg.autograd.record`` /
   ``pause`` / ``train_mode`` / ``predict_mode`` / ``set_training``;
4. nobody chose: **training when the call runs under a gradient trace**
   (``dlfeval``, ``gg.gradient``, ``value_with_pullback``, ``record()``, a
   checkpoint's recomputation), inference otherwise. Differentiating a loss
   therefore never silently uses BatchNorm's running statistics; evaluate with
   ``net.predict(x)`` (or under ``gg.learning_phase("inference")``) when a
   gradient of an inference pass is wanted.

The functions ``gg.dropout`` and ``gg.batchnorm`` follow rules 3 and 4
(``gg.autograd.is_training()``), and take ``training=True/False`` to decide per call.

>>> import gpugrad as gg
>>> drop = gg.nn.Dropout(0.5)
>>> x = gg.ones((1000,))
>>> bool((drop(x).numpy() == 1).all())  # no gradient trace, nobody chose: inference
True
>>> with gg.learning_phase("training"):
...     dropped = int((drop(x).numpy() == 0).sum())
>>> 400 < dropped < 600
True
>>> bool((drop.forward(x).numpy() == 0).any()), bool((drop.predict(x).numpy() == 1).all())
(True, True)
"""

from __future__ import annotations

from contextvars import ContextVar

from . import tape

__all__ = ["learning_phase", "forward", "predict", "is_training"]


class CallPhase:
    """The phase set by one ``forward``/``predict`` call: a bool for every reader of
    ``Frame.training`` (``if frame.training:``), and recognisable (rule 1) by identity."""

    __slots__ = ("value", "name")

    def __init__(self, value, name):
        self.value = value
        self.name = name

    def __bool__(self):
        return self.value

    def __repr__(self):
        return f"<phase of a {self.name} call>"


FORWARD = CallPhase(True, "forward")
PREDICT = CallPhase(False, "predict")


def is_training() -> bool:
    """The phase of the current context (rules 3 and 4 above): the innermost explicit
    choice, else training exactly when a gradient trace is open."""
    frame = tape.FRAME.get()
    t = frame.training
    if t is None:
        return frame.trace is not None
    return bool(t)


def layer_is_training(layer) -> bool:
    """The phase a layer runs in now (rules 1 to 4)."""
    frame = tape.FRAME.get()
    t = frame.training
    if t is FORWARD or t is PREDICT:
        return t.value
    mode = getattr(layer, "_mode", None)
    if mode is not None:
        return mode
    if t is None:
        return frame.trace is not None
    return bool(t)


_PHASES = {"training": True, "inference": False, "train": True, "predict": False}


class learning_phase:  # noqa: N801 - a context manager read as a function (Swift's spelling)
    """``with gg.learning_phase("training"):`` (or ``"inference"``): Dropout and
    BatchNorm train (or infer) inside the block (Swift for TensorFlow's
    ``Context.local.learningPhase``). ``True``/``False`` are accepted too.

    >>> import gpugrad as gg
    >>> with gg.learning_phase("inference"):
    ...     gg.autograd.is_training()
    False
    """

    __slots__ = ("_value", "_token")

    def __init__(self, phase):
        if isinstance(phase, bool):
            value = phase
        elif isinstance(phase, str) and phase.lower() in _PHASES:
            value = _PHASES[phase.lower()]
        else:
            raise ValueError(
                f"learning_phase: phase must be 'training' or 'inference', got {phase!r}"
            )
        self._value = value
        self._token = None

    def __enter__(self):
        frame = tape.FRAME.get()
        self._token = tape.FRAME.set(tape.Frame(frame.trace, frame.recording, self._value))
        return self

    def __exit__(self, *exc):
        tape.FRAME.reset(self._token)
        return False


# why: true inside a layer call, so the ``forward`` a layer's own code calls
# (``super().forward(x)``, ``self.sub.forward(h)``) follows the phase it runs in
IN_CALL: ContextVar[bool] = ContextVar("gpugrad_in_layer_call", default=False)


def call(fn, args, kwargs, phase=None):
    """``fn(*args, **kwargs)`` as one layer call: ``phase`` (FORWARD or PREDICT) is
    applied for the call unless it is FORWARD and a layer call is already running."""
    outer = IN_CALL.get()
    if phase is None or (outer and phase is FORWARD):
        if outer:
            return fn(*args, **kwargs)
        token = IN_CALL.set(True)
        try:
            return fn(*args, **kwargs)
        finally:
            IN_CALL.reset(token)
    frame = tape.FRAME.get()
    ftoken = tape.FRAME.set(tape.Frame(frame.trace, frame.recording, phase))
    token = IN_CALL.set(True)
    try:
        return fn(*args, **kwargs)
    finally:
        IN_CALL.reset(token)
        tape.FRAME.reset(ftoken)


def forward(net, *args, **kwargs):
    """MATLAB's ``forward(net, X)``: ``net(x)`` in training mode (Dropout drops,
    BatchNorm normalizes with the batch statistics and updates its running ones in
    place). ``net`` is a ``gg.nn.Layer`` or any function of its arrays; the same as
    ``net.forward(x)`` for a layer.

    >>> import gpugrad as gg
    >>> bn = gg.nn.BatchNorm(2)
    >>> y = gg.forward(bn, gg.dlarray([[0.0, 1.0], [2.0, 5.0]]))
    >>> y.numpy().round(3).tolist(), bn.running_mean.astype(float).round(6).tolist()
    ([[-1.0, -1.0], [1.0, 1.0]], [0.1, 0.3])
    """
    return call(_impl(net, "forward"), args, kwargs, FORWARD)


def predict(net, *args, **kwargs):
    """MATLAB's ``predict(net, X)``: ``net(x)`` in inference mode (Dropout is the
    identity, BatchNorm uses its running statistics and leaves them alone), even
    inside a training call (a teacher network's ``predict`` inside a student's
    ``forward``). The same as ``net.predict(x)`` for a layer.

    >>> import gpugrad as gg
    >>> bn = gg.nn.BatchNorm(1)
    >>> gg.predict(bn, gg.dlarray([[3.0]])).numpy().round(3).tolist()
    [[3.0]]
    """
    return call(_impl(net, "predict"), args, kwargs, PREDICT)


def _impl(net, where):
    impl = getattr(type(net), "_checked_impl", None)
    if impl is not None:
        return impl.__get__(net)
    if not callable(net):
        raise TypeError(
            f"{where}: net must be a gg.nn.Layer or a function of its input arrays, "
            f"got {type(net).__name__}"
        )
    return net
