"""Deep learning: MATLAB functions (``gg.fullyconnect``, ``gg.dlconv``, ...) and
Swift-style layers (``gg.nn.Dense``, ``gg.nn.Sequential``, ...)."""

from . import functional as _functional
from .functional import (
    avgpool,
    batchnorm,
    crossentropy,
    dlconv,
    dltranspconv,
    dropout,
    embed,
    fullyconnect,
    gelu,
    groupnorm,
    gru,
    huber,
    l1loss,
    l2loss,
    layernorm,
    leakyrelu,
    lstm,
    maxpool,
    mse,
    onehotencode,
    softmax,
    softmax_cross_entropy,
)
from .layers import (
    GRU,
    LSTM,
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GroupNorm,
    Layer,
    LayerNorm,
    MaxPool2D,
    Parallel,
    Residual,
    Sequential,
    TransposedConv2D,
    sequenced,
)

# one list of exported names: the functions module's (gg.relu itself comes from gpugrad.ops)
__all__ = [name for name in _functional.__all__ if name != "relu"]
