"""Bad input to the deep-learning functions (API.md section 6): each case raises a
ValueError that names the function, the argument and what was expected (with the
numbers), never a silently wrong result or an error from deep inside NumPy.
``gg.debug.detect_anomaly`` finds the op that produced a NaN/Inf, and only when on."""

import warnings

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.ops.core import REGISTRY

R = np.random.default_rng(5)


def rnd(*shape):
    return R.standard_normal(shape)


IMG = gg.dlarray(rnd(5, 5, 3, 2), "SSCB")
SEQ = gg.dlarray(rnd(3, 2, 4), "CBT")
PROBS = gg.dlarray(np.full((3, 4), 1 / 3), "CB")
ONEHOT = gg.dlarray(np.eye(3)[:, [0, 1, 2, 0]], "CB")
LOGITS = gg.dlarray(rnd(4, 3))
EMB = rnd(3, 5)


def conv(**kw):
    return lambda: gg.dlconv(IMG, rnd(3, 3, 3, 2), rnd(2), **kw)


CASES = {
    # ------------------------------------------------ formats (every function)
    "fullyconnect unformatted": (
        lambda: gg.fullyconnect(gg.dlarray(rnd(3, 2)), rnd(4, 3), rnd(4)),
        r"fullyconnect: .*unformatted.*data_format='CB'",
    ),
    "dlconv unformatted": (
        lambda: gg.dlconv(gg.dlarray(rnd(5, 5, 3, 2)), rnd(3, 3, 3, 2), rnd(2)),
        r"dlconv: .*unformatted.*data_format='SSCB'",
    ),
    "dltranspconv unformatted": (
        lambda: gg.dltranspconv(gg.dlarray(rnd(5, 5, 3, 2)), rnd(3, 3, 2, 3), rnd(2)),
        r"dltranspconv: .*data_format='SSCB'",
    ),
    "maxpool unformatted": (lambda: gg.maxpool(rnd(5, 5, 3, 2), 2), r"maxpool: .*'SSCB'"),
    "avgpool unformatted": (lambda: gg.avgpool(rnd(5, 5, 3, 2), 2), r"avgpool: .*'SSCB'"),
    "softmax unformatted": (lambda: gg.softmax(rnd(3, 2)), r"softmax: .*data_format='CB'"),
    "batchnorm unformatted": (
        lambda: gg.batchnorm(rnd(3, 2), rnd(3), rnd(3)),
        r"batchnorm: .*data_format='SSCB'",
    ),
    "layernorm unformatted": (
        lambda: gg.layernorm(rnd(3, 2), rnd(3), rnd(3)),
        r"layernorm: .*data_format='CB'",
    ),
    "lstm unformatted": (
        lambda: gg.lstm(rnd(3, 2, 4), None, None, rnd(8, 3), rnd(8, 2), rnd(8)),
        r"lstm: .*data_format='CBT'",
    ),
    "gru unformatted": (
        lambda: gg.gru(rnd(3, 2, 4), None, rnd(6, 3), rnd(6, 2), rnd(6)),
        r"gru: .*data_format='CBT'",
    ),
    "embed unformatted": (lambda: gg.embed(np.array([1, 2]), EMB), r"embed: .*'CBT'"),
    "crossentropy unformatted": (
        lambda: gg.crossentropy(np.full((3, 4), 0.3), np.full((3, 4), 0.3)),
        r"crossentropy: .*data_format='CB'",
    ),
    "mse unformatted": (lambda: gg.mse(rnd(3, 4), rnd(3, 4)), r"mse: .*data_format='CB'"),
    "l1loss unformatted": (lambda: gg.l1loss(rnd(3, 4), rnd(3, 4)), r"l1loss: .*'CB'"),
    "l2loss unformatted": (lambda: gg.l2loss(rnd(3, 4), rnd(3, 4)), r"l2loss: .*'CB'"),
    "huber unformatted": (lambda: gg.huber(rnd(3, 4), rnd(3, 4)), r"huber: .*'CB'"),
    "contradictory data_format": (
        lambda: gg.dlconv(IMG, rnd(3, 3, 3, 2), rnd(2), data_format="SSBC"),
        r"dlconv: data_format='SSBC' contradicts the format 'SSCB'",
    ),
    "data_format not a string": (
        lambda: gg.fullyconnect(rnd(3, 2), rnd(4, 3), rnd(4), data_format=3),
        r"fullyconnect: data_format must be a string .*'CB'.*got 3",
    ),
    "data_format wrong length": (
        lambda: gg.fullyconnect(rnd(3, 2), rnd(4, 3), rnd(4), data_format="SCB"),
        r"fullyconnect: data_format='SCB' has 3 labels but the input has 2",
    ),
    "data_format unknown label": (
        lambda: gg.softmax(rnd(3, 2), data_format="CX"),
        r"softmax: data_format='CX'.*unknown format label",
    ),
    "no channel dimension": (
        lambda: gg.softmax(gg.dlarray(rnd(3, 2), "SB")),
        r"softmax: the input format 'SB' has no 'C' dimension",
    ),
    "dlconv not an image": (
        lambda: gg.dlconv(gg.dlarray(rnd(3, 2), "CB"), rnd(3, 3, 3, 2), rnd(2)),
        r"dlconv: expected 2-D image data with format 'SSCB'.*got 'CB'",
    ),
    "lstm spatial input": (
        lambda: gg.lstm(gg.dlarray(rnd(2, 3, 2, 4), "SCBT"), None, None, rnd(8, 3), rnd(8, 2), 0),
        r"lstm: expected format 'CBT'.*got 'SCBT'",
    ),
    # ------------------------------------------------ weights vs the input's channels
    "fullyconnect weights in": (
        lambda: gg.fullyconnect(gg.dlarray(rnd(3, 2), "CB"), rnd(4, 5), rnd(4)),
        r"fullyconnect: weights dimension 1 \(in\) is 5 but the input has 3 features",
    ),
    "fullyconnect weights not a matrix": (
        lambda: gg.fullyconnect(gg.dlarray(rnd(3, 2), "CB"), rnd(3), rnd(1)),
        r"fullyconnect: weights must be a matrix \[out, in\].*shape \(3,\)",
    ),
    "fullyconnect bias": (
        lambda: gg.fullyconnect(gg.dlarray(rnd(3, 2), "CB"), rnd(4, 3), rnd(5)),
        r"fullyconnect: bias must have 4 entries.*\(5,\)",
    ),
    "dlconv in_channels": (
        lambda: gg.dlconv(IMG, rnd(3, 3, 4, 2), rnd(2)),
        r"dlconv: weights dimension 2 \(in_channels\) is 4 but the input has 3 channels",
    ),
    "dlconv in_channels per group": (
        lambda: gg.dlconv(IMG, rnd(3, 3, 2, 4), rnd(4), groups=2),
        r"dlconv: weights dimension 2 \(in_channels per group\) is 2, so 2 groups need 4 "
        r"input channels, but the input has 3",
    ),
    "dlconv filters vs groups": (
        lambda: gg.dlconv(gg.dlarray(rnd(5, 5, 4, 2), "SSCB"), rnd(3, 3, 2, 3), rnd(3), groups=2),
        r"dlconv: weights dimension 3 \(filters\) is 3, which does not split into 2 groups",
    ),
    "dlconv weights not 4-D": (
        lambda: gg.dlconv(IMG, rnd(3, 3), rnd(2)),
        r"dlconv: weights must be 4-D \[h, w, in_channels, filters\], got shape \(3, 3\)",
    ),
    "dlconv empty filter": (
        lambda: gg.dlconv(IMG, rnd(0, 3, 3, 2), rnd(2)),
        r"dlconv: weights must have no empty dimension.*\(0, 3, 3, 2\)",
    ),
    "dlconv bias": (
        lambda: gg.dlconv(IMG, rnd(3, 3, 3, 2), rnd(3)),
        r"dlconv: bias must have 2 entries \(one per filter.*\(3,\)",
    ),
    "dlconv groups 0": (
        lambda: gg.dlconv(IMG, rnd(3, 3, 3, 2), rnd(2), groups=0),
        r"dlconv: groups must be >= 1, got 0",
    ),
    "dltranspconv in_channels": (
        lambda: gg.dltranspconv(IMG, rnd(3, 3, 2, 4), rnd(2)),
        r"dltranspconv: weights dimension 3 \(in_channels\) is 4 but the input has 3 channels",
    ),
    "dltranspconv bias": (
        lambda: gg.dltranspconv(IMG, rnd(3, 3, 2, 3), rnd(5)),
        r"dltranspconv: bias must have 2 entries .*\(5,\)",
    ),
    "batchnorm offset": (
        lambda: gg.batchnorm(IMG, rnd(4), rnd(3)),
        r"batchnorm: offset must have one entry per channel \(3\), got shape \(4,\)",
    ),
    "batchnorm scale_factor": (
        lambda: gg.batchnorm(IMG, rnd(3), rnd(2)),
        r"batchnorm: scale_factor must have one entry per channel \(3\), got shape \(2,\)",
    ),
    "batchnorm running_mean": (
        lambda: gg.batchnorm(IMG, rnd(3), rnd(3), rnd(4), np.ones(3), training=True),
        r"batchnorm: running_mean must have one entry per channel \(3\), got shape \(4,\)",
    ),
    "batchnorm running_var": (
        lambda: gg.batchnorm(IMG, rnd(3), rnd(3), rnd(3), np.ones(4), training=False),
        r"batchnorm: running_var must have one entry per channel \(3\), got shape \(4,\)",
    ),
    "batchnorm running_var missing": (
        lambda: gg.batchnorm(IMG, rnd(3), rnd(3), rnd(3), None, training=True),
        r"batchnorm: running_var is missing; pass both",
    ),
    "batchnorm epsilon": (
        lambda: gg.batchnorm(IMG, rnd(3), rnd(3), epsilon=0),
        r"batchnorm: epsilon must be > 0, got 0",
    ),
    "batchnorm decay": (
        lambda: gg.batchnorm(IMG, rnd(3), rnd(3), rnd(3), np.ones(3), mean_decay=2),
        r"batchnorm: mean_decay must be in \[0, 1\], got 2",
    ),
    "layernorm offset": (
        lambda: gg.layernorm(gg.dlarray(rnd(3, 2), "CB"), rnd(4), rnd(3)),
        r"layernorm: offset must have one entry per channel \(3\), got shape \(4,\)",
    ),
    "lstm weights channels": (
        lambda: gg.lstm(SEQ, None, None, rnd(8, 2), rnd(8, 2), rnd(8)),
        r"lstm: weights dimension 1 \(channels\) is 2 but the input has 3 channels",
    ),
    "lstm weights rows": (
        lambda: gg.lstm(SEQ, None, None, rnd(7, 3), rnd(8, 2), rnd(8)),
        r"lstm: weights must have shape \[4\*hidden, channels\] = \[4\*hidden, 3\].*\(7, 3\)",
    ),
    "lstm recurrent_weights": (
        lambda: gg.lstm(SEQ, None, None, rnd(8, 3), rnd(8, 3), rnd(8)),
        r"lstm: recurrent_weights must have shape .*\(8, 2\).*got shape \(8, 3\)",
    ),
    "lstm bias": (
        lambda: gg.lstm(SEQ, None, None, rnd(8, 3), rnd(8, 2), rnd(9)),
        r"lstm: bias must have 4\*hidden = 8 entries, got shape \(9,\)",
    ),
    "lstm h0": (
        lambda: gg.lstm(SEQ, rnd(3, 2), None, rnd(8, 3), rnd(8, 2), rnd(8)),
        r"lstm: h0 must have shape \[hidden, observations\] = \(2, 2\).*got shape \(3, 2\)",
    ),
    # (N, H) instead of (H, N): same size, so a reshape would silently scramble it
    "lstm c0 transposed": (
        lambda: gg.lstm(
            gg.dlarray(rnd(3, 3, 4), "CBT"), None, rnd(3, 2), rnd(8, 3), rnd(8, 2), rnd(8)
        ),
        r"lstm: c0 must have shape \[hidden, observations\] = \(2, 3\).*got shape \(3, 2\)",
    ),
    "gru weights channels": (
        lambda: gg.gru(SEQ, None, rnd(6, 2), rnd(6, 2), rnd(6)),
        r"gru: weights dimension 1 \(channels\) is 2 but the input has 3 channels",
    ),
    "gru bias": (
        lambda: gg.gru(SEQ, None, rnd(6, 3), rnd(6, 2), rnd(7)),
        r"gru: bias must have 3\*hidden = 6 entries, got shape \(7,\)",
    ),
    "gru recurrent bias": (
        lambda: gg.gru(
            SEQ,
            None,
            rnd(6, 3),
            rnd(6, 2),
            rnd(6),
            reset_gate_mode="recurrent-bias-after-multiplication",
        ),
        r"gru: bias must have 6\*hidden = 12 entries",
    ),
    "gru reset_gate_mode": (
        lambda: gg.gru(SEQ, None, rnd(6, 3), rnd(6, 2), rnd(6), reset_gate_mode="after"),
        r"gru: reset_gate_mode must be one of 'after-multiplication'.*got 'after'",
    ),
    "embed weights": (
        lambda: gg.embed(gg.dlarray(np.array([[1.0]]), "CB"), rnd(5)),
        r"embed: weights must be a matrix \[dim, vocabulary\], got shape \(5,\)",
    ),
    "embed channel size": (
        lambda: gg.embed(gg.dlarray(np.array([[1.0], [2.0]]), "CB"), EMB),
        r"embed: the C dimension of x must have size 1.*got 2",
    ),
    # ------------------------------------------------ stride, padding, dilation, kernel size
    "stride 0": (conv(stride=0), r"dlconv: stride must be >= 1.*got 0"),
    "stride pair with 0": (conv(stride=(1, 0)), r"dlconv: stride must be >= 1.*\(1, 0\)"),
    "stride fractional": (conv(stride=1.5), r"dlconv: stride must be an integer >= 1.*1\.5"),
    "stride fractional in a pair": (
        conv(stride=(2, 1.5)),
        r"dlconv: stride must be an integer .*\(2, 1\.5\)",
    ),
    "stride triple": (conv(stride=(1, 2, 3)), r"dlconv: stride must be .*pair.*\(1, 2, 3\)"),
    "stride string": (conv(stride="2"), r"dlconv: stride must be an integer.*'2'"),
    "dilation 0": (conv(dilation=0), r"dlconv: dilation must be >= 1.*got 0"),
    "dilation negative": (conv(dilation=(1, -1)), r"dlconv: dilation must be >= 1"),
    "padding negative": (conv(padding=-1), r"dlconv: padding must be >= 0, got -1"),
    "padding pair negative": (conv(padding=(1, -2)), r"dlconv: padding must be >= 0"),
    "padding triple": (conv(padding=(1, 2, 3)), r"dlconv: padding must be .*4-tuple.*'same'"),
    "padding 'valid'": (conv(padding="valid"), r"dlconv: padding must be .*'same', got 'valid'"),
    "padding fractional": (conv(padding=0.5), r"dlconv: padding must be an integer >= 0"),
    "kernel larger than input": (
        lambda: gg.dlconv(IMG, rnd(7, 3, 3, 2), rnd(2)),
        r"dlconv: the 7x3 filter .* larger than the padded 5x5 input",
    ),
    "dilated kernel larger than input": (
        conv(dilation=3),
        r"dlconv: the 3x3 filter \(dilation \(3, 3\)\) is larger than the padded 5x5 input",
    ),
    "dltranspconv stride 0": (
        lambda: gg.dltranspconv(IMG, rnd(3, 3, 2, 3), rnd(2), stride=0),
        r"dltranspconv: stride must be >= 1",
    ),
    "dltranspconv cropping negative": (
        lambda: gg.dltranspconv(IMG, rnd(3, 3, 2, 3), rnd(2), cropping=-1),
        r"dltranspconv: cropping must be >= 0, got -1",
    ),
    "dltranspconv cropping everything": (
        lambda: gg.dltranspconv(IMG, rnd(3, 3, 2, 3), rnd(2), cropping=10),
        r"dltranspconv: cropping \(10, 10, 10, 10\) removes the whole 7x7 output",
    ),
    "dltranspconv cropping same with stride > filter": (
        lambda: gg.dltranspconv(IMG, rnd(2, 2, 2, 3), rnd(2), stride=3, cropping="same"),
        r"dltranspconv: cropping='same' needs a filter at least as large as the stride",
    ),
    "maxpool pool_size 0": (lambda: gg.maxpool(IMG, 0), r"maxpool: pool_size must be >= 1"),
    "avgpool stride 0": (lambda: gg.avgpool(IMG, 2, stride=0), r"avgpool: stride must be >= 1"),
    "maxpool padding negative": (
        lambda: gg.maxpool(IMG, 2, padding=-1),
        r"maxpool: padding must be >= 0",
    ),
    "maxpool pool larger than input": (
        lambda: gg.maxpool(IMG, 6),
        r"maxpool: the 6x6 pool is larger than the padded 5x5 input",
    ),
    "avgpool pool larger than input": (
        lambda: gg.avgpool(IMG, (2, 6)),
        r"avgpool: the 2x6 pool is larger than the padded 5x5 input",
    ),
    # a window made only of padding would take a padding value (or nothing)
    "maxpool padding as large as the pool": (
        lambda: gg.maxpool(IMG, 2, padding=2),
        r"maxpool: padding \(2, 2, 2, 2\) .* smaller than the 2x2 pool",
    ),
    "avgpool padding as large as the pool": (
        lambda: gg.avgpool(IMG, (3, 2), padding=(0, 2)),
        r"avgpool: padding \(0, 0, 2, 2\) .* smaller than the 3x2 pool",
    ),
    # ------------------------------------------------ other arguments
    "leakyrelu scale": (lambda: gg.leakyrelu(IMG, "a"), r"leakyrelu: scale must be a real number"),
    "leakyrelu scale vector": (
        lambda: gg.leakyrelu(IMG, rnd(3)),
        r"leakyrelu: scale must be a real number",
    ),
    "gelu approximation": (
        lambda: gg.gelu(IMG, "erf"),
        r"gelu: approximation must be 'none' or 'tanh', got 'erf'",
    ),
    "dropout rate 1": (lambda: gg.dropout(IMG, 1), r"dropout: rate must be in \[0, 1\), got 1"),
    "dropout rate negative": (lambda: gg.dropout(IMG, -0.1), r"dropout: rate .*got -0\.1"),
    "dropout rate string": (lambda: gg.dropout(IMG, "0.5"), r"dropout: rate .*got '0\.5'"),
    "dropout rate vector": (
        lambda: gg.dropout(IMG, np.array([0.1, 0.2])),
        r"dropout: rate must be a finite real number",
    ),
    "huber transition_point": (
        lambda: gg.huber(PROBS, ONEHOT, transition_point=-1),
        r"huber: transition_point must be > 0, got -1",
    ),
    "loss normalization": (
        lambda: gg.l1loss(PROBS, ONEHOT, normalization="mean"),
        r"l1loss: normalization must be 'batch-size', 'all-elements' or 'none', got 'mean'",
    ),
    # ------------------------------------------------ labels and targets
    "crossentropy targets shape": (
        lambda: gg.crossentropy(PROBS, gg.dlarray(rnd(3, 3), "CB")),
        r"crossentropy: targets must have the predictions' shape \(3, 4\), got \(3, 3\)",
    ),
    "crossentropy class indices as targets": (
        lambda: gg.crossentropy(PROBS, np.array([0, 1, 2, 0])),
        r"crossentropy: targets must have .*got \(4,\); for class indices use gg.onehotencode",
    ),
    "crossentropy targets out of range": (
        lambda: gg.crossentropy(PROBS, gg.dlarray(2 * ONEHOT.numpy(), "CB")),
        r"crossentropy: targets must be probabilities in \[0, 1\].*got values in \[0, 2\]",
    ),
    "crossentropy targets format": (
        lambda: gg.crossentropy(PROBS, gg.dlarray(ONEHOT.numpy(), "CT")),
        r"crossentropy: targets format 'CT' differs from 'CB'",
    ),
    "mse targets shape": (
        lambda: gg.mse(PROBS, rnd(4, 3)),
        r"mse: targets must have the predictions' shape \(3, 4\), got \(4, 3\)",
    ),
    "l1loss targets shape": (
        lambda: gg.l1loss(PROBS, rnd(3)),
        r"l1loss: targets must have the predictions' shape \(3, 4\), got \(3,\)",
    ),
    "l2loss targets scalar": (
        lambda: gg.l2loss(PROBS, 0.0),
        r"l2loss: targets must have the predictions' shape \(3, 4\), got \(\)",
    ),
    "huber targets shape": (
        lambda: gg.huber(PROBS, rnd(3, 5)),
        r"huber: targets must have the predictions' shape \(3, 4\), got \(3, 5\)",
    ),
    "softmax_cross_entropy labels shape": (
        lambda: gg.nn.softmax_cross_entropy(LOGITS, np.array([0, 1])),
        r"softmax_cross_entropy: labels must have shape \(4,\) .* or \(4, 3\).*got shape \(2,\)",
    ),
    "softmax_cross_entropy labels column": (
        lambda: gg.nn.softmax_cross_entropy(LOGITS, np.array([[0], [1], [2], [0]])),
        r"softmax_cross_entropy: labels must have shape \(4,\).*got shape \(4, 1\)",
    ),
    "softmax_cross_entropy label too large": (
        lambda: gg.nn.softmax_cross_entropy(LOGITS, np.array([0, 1, 2, 3])),
        r"softmax_cross_entropy: labels must be class indices in \[0, 3\).*\[0, 3\]",
    ),
    "softmax_cross_entropy label negative": (
        lambda: gg.nn.softmax_cross_entropy(LOGITS, [0, 1, 2, -1]),
        r"softmax_cross_entropy: labels must be class indices in \[0, 3\).*\[-1, 2\]",
    ),
    "softmax_cross_entropy label fractional": (
        lambda: gg.nn.softmax_cross_entropy(LOGITS, np.array([0, 1, 2, 0.5])),
        r"softmax_cross_entropy: labels must be integer class indices \(0-based\), got 0\.5",
    ),
    "softmax_cross_entropy label NaN": (
        lambda: gg.nn.softmax_cross_entropy(LOGITS, np.array([0, 1, 2, np.nan])),
        r"softmax_cross_entropy: labels must be integer class indices.*got nan",
    ),
    "softmax_cross_entropy label strings": (
        lambda: gg.nn.softmax_cross_entropy(LOGITS, np.array(["a", "b", "c", "d"])),
        r"softmax_cross_entropy: labels must be integer class indices.*dtype <U1",
    ),
    "softmax_cross_entropy probabilities out of range": (
        lambda: gg.nn.softmax_cross_entropy(LOGITS, 3 * np.eye(3)[[0, 1, 2, 0]]),
        r"softmax_cross_entropy: probability labels .* must lie in \[0, 1\].*\[0, 3\]",
    ),
    "softmax_cross_entropy logits shape": (
        lambda: gg.nn.softmax_cross_entropy(gg.dlarray(rnd(3)), [0]),
        r"softmax_cross_entropy: logits must be \[batch, classes\], got shape \(3,\)",
    ),
    "softmax_cross_entropy empty batch": (
        lambda: gg.nn.softmax_cross_entropy(gg.dlarray(rnd(0, 3)), np.array([], dtype=int)),
        r"softmax_cross_entropy: logits must have at least one row .*\(0, 3\)",
    ),
    "onehotencode label too large": (
        lambda: gg.onehotencode(np.array([0, 5]), 0, 3),
        r"onehotencode: labels must be class indices in \[0, 3\).*\[0, 5\]",
    ),
    "onehotencode label negative": (
        lambda: gg.onehotencode(np.array([0, -1]), 0),
        r"onehotencode: labels must be class indices in \[0, 1\).*\[-1, 0\]",
    ),
    "onehotencode label fractional": (
        lambda: gg.onehotencode(np.array([0, 1.5]), 0, 3),
        r"onehotencode: labels must be integer class indices \(0-based\), got 1\.5",
    ),
    "onehotencode strings without classes": (
        lambda: gg.onehotencode(["a"], 0),
        r"onehotencode: labels must be integer class indices.*pass classes=",
    ),
    "onehotencode unknown class": (
        lambda: gg.onehotencode(["c"], 0, classes=["a", "b"]),
        r"onehotencode: label 'c' is not in classes \['a', 'b'\]",
    ),
    "onehotencode empty without num_classes": (
        lambda: gg.onehotencode(np.array([], dtype=int), 0),
        r"onehotencode: labels are empty; pass num_classes",
    ),
    "onehotencode num_classes": (
        lambda: gg.onehotencode(np.array([0]), 0, 0),
        r"onehotencode: num_classes must be >= 1, got 0",
    ),
    "onehotencode feature_dim": (
        lambda: gg.onehotencode(np.array([0, 1]), 5, 3),
        r"onehotencode: feature_dim must be in \[0, 1\] .*shape \(2,\), got 5",
    ),
    "embed index too large": (
        lambda: gg.embed(gg.dlarray(np.array([[5.0, 1.0]]), "CB"), EMB),
        r"embed: indices must be vocabulary indices in \[0, 5\) \(0-based\), got values in \[1, 5\]",
    ),
    "embed index fractional": (
        lambda: gg.embed(gg.dlarray(np.array([[1.5]]), "CB"), EMB),
        r"embed: indices must be integer vocabulary indices \(0-based\), got 1\.5",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_raises_a_clear_value_error(name):
    fn, pattern = CASES[name]
    with pytest.raises(ValueError, match=pattern):
        fn()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_error_comes_from_the_checks_not_from_numpy(name):
    # the error is raised by gpugrad's own validation, not by NumPy on the way
    fn, _ = CASES[name]
    with pytest.raises(ValueError) as info:
        fn()
    assert "gpugrad" in info.traceback[-1].path.parts


def test_accepted_spellings_of_stride_and_padding():
    w, b = rnd(3, 3, 3, 2), rnd(2)
    ref = gg.dlconv(IMG, w, b, stride=(2, 2), padding=(1, 1, 1, 1)).numpy()
    for stride, padding in [(2, 1), (2.0, (1, 1)), ([2, 2], np.array([1, 1, 1, 1]))]:
        y = gg.dlconv(IMG, w, b, stride=stride, padding=padding)
        np.testing.assert_array_equal(y.numpy(), ref)
    # "same" keeps ceil(size / stride), with the odd extra padding at the bottom/right
    y = gg.dlconv(IMG, gg.dlarray(rnd(2, 2, 3, 2)), b, stride=2, padding="SAME")
    assert y.shape == (3, 3, 2, 2)
    assert gg.maxpool(IMG, 3, stride=2, padding="same").shape == (3, 3, 3, 2)


def test_lstm_state_shared_by_every_observation():
    w, r, bias = rnd(8, 3), rnd(8, 2), rnd(8)
    h0 = rnd(2)
    y, h, c = gg.lstm(SEQ, h0, None, w, r, bias)
    y2, h2, c2 = gg.lstm(SEQ, np.stack([h0, h0], axis=1), None, w, r, bias)
    np.testing.assert_allclose(y.numpy(), y2.numpy())
    np.testing.assert_allclose(h.numpy(), h2.numpy())


def test_embed_input_without_a_channel_dimension():
    idx = np.array([[0, 4, 2], [1, 1, 3]])  # (B, T)
    y = gg.embed(gg.dlarray(idx, "BT"), EMB)
    assert gg.dims(y) == "CBT" and y.shape == (3, 2, 3)
    np.testing.assert_array_equal(y.numpy(), EMB[:, idx])
    # unformatted: the new C is not in data_format, so the result is in C,B,T order
    y = gg.embed(idx.T, EMB, data_format="TB")
    assert gg.dims(y) == "" and y.shape == (3, 2, 3)
    np.testing.assert_array_equal(y.numpy(), EMB[:, idx])


# ------------------------------------------------------------------ NaN / Inf


def _negative_probability_loss():
    return gg.crossentropy(gg.dlarray(-np.ones((3, 4)), "CB"), ONEHOT)


def test_nan_in_a_loss_does_not_raise_by_default():
    assert not gg.debug.is_anomaly_enabled()
    with np.errstate(invalid="ignore"):
        loss = _negative_probability_loss()
    assert np.isnan(float(loss))


def test_detect_anomaly_as_a_context_manager_names_the_op():
    with np.errstate(invalid="ignore", over="ignore"), gg.debug.detect_anomaly():
        assert gg.debug.is_anomaly_enabled()
        with pytest.raises(gg.debug.AnomalyError, match=r"op 'log' produced NaN .*finite inputs"):
            _negative_probability_loss()
        with pytest.raises(FloatingPointError, match=r"op 'multiply' produced Inf"):
            gg.mse(gg.dlarray(np.full((3, 4), 1e200), "CB"), ONEHOT)
        # finite work runs unchanged inside the block
        np.testing.assert_allclose(float(gg.crossentropy(PROBS, ONEHOT)), np.log(3))
    assert not gg.debug.is_anomaly_enabled()
    with np.errstate(invalid="ignore"):
        assert np.isnan(float(_negative_probability_loss()))
    # the primitives are restored: no checking wrapper is left behind
    assert all(p.fwd.__name__ != "fwd_checked" for p in REGISTRY.values())


def test_detect_anomaly_raises_without_numpy_warnings_first():
    # the AnomalyError names the op; NumPy's RuntimeWarning for the same NaN is noise
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with gg.debug.detect_anomaly():
            with pytest.raises(gg.debug.AnomalyError, match="'log'"):
                gg.log(gg.dlarray([1.0, -1.0]))
            with pytest.raises(gg.debug.AnomalyError, match="'divide'"):
                gg.dlarray([1.0]) / gg.dlarray([0.0])


def test_detect_anomaly_as_a_call_and_nested():
    try:
        gg.debug.detect_anomaly()
        assert gg.debug.is_anomaly_enabled()
        with pytest.raises(gg.debug.AnomalyError, match="'log'"), np.errstate(invalid="ignore"):
            _negative_probability_loss()
        with gg.debug.detect_anomaly(False):
            assert not gg.debug.is_anomaly_enabled()
            with np.errstate(invalid="ignore"):
                assert np.isnan(float(_negative_probability_loss()))
        assert gg.debug.is_anomaly_enabled()
    finally:
        gg.debug.detect_anomaly(False)
    assert not gg.debug.is_anomaly_enabled()


def test_detect_anomaly_in_the_backward_pass():
    def grad_of_sqrt(x):
        return gg.dlgradient(gg.sum(gg.sqrt(x)), x)

    zeros = gg.dlarray(np.zeros(3))
    with np.errstate(divide="ignore"):
        assert np.isinf(gg.dlfeval(grad_of_sqrt, zeros).numpy()).all()
        with gg.debug.detect_anomaly():
            with pytest.raises(gg.debug.AnomalyError, match=r"backward pass of op 'sqrt'.*Inf"):
                gg.dlfeval(grad_of_sqrt, zeros)


def test_detect_anomaly_reports_nan_that_came_with_the_data():
    x = gg.dlarray(np.array([[1.0, np.nan]]), "CB")
    with gg.debug.detect_anomaly():
        with pytest.raises(gg.debug.AnomalyError, match=r"input\(s\) 0 already held NaN"):
            gg.mse(x, gg.dlarray(np.zeros((1, 2)), "CB"))
