"""Differential fuzzer: seeded random programs of gpugrad ops run side by side with
PyTorch (CPU, float64), comparing values, gradients and Hessian-vector products
through the three faces (MATLAB ``dlfeval``/``dlgradient``, Swift-style
``value_with_gradient``, MXNet ``autograd``) and through ``checkpoint``.

``python -m tests.fuzz N [--seed S] [--device cpu|emu]`` runs N programs and prints
the figures; ``tests/test_zz_fuzz.py`` runs a bounded number in CI and checks that a
planted wrong VJP is caught.

Conventions (where gpugrad and PyTorch are compared like for like):

- Inputs are real float64 arrays; complex numbers appear only inside a program
  (``x + 1j*y``), so MATLAB's steepest-ascent convention for complex gradients
  (``dL/da + i dL/db``) and PyTorch's (the conjugate Wirtinger form) never meet:
  both give the same real gradients.
- MATLAB layouts are translated explicitly: ``'BC'``/``'CB'`` data for
  ``fullyconnect`` (weights ``[out, in]``, PyTorch's ``Linear`` layout),
  ``'SSCB'`` ``[H, W, C, N]`` data and ``[kh, kw, C, F]`` weights for ``dlconv``
  (PyTorch's NCHW and ``[F, C, kh, kw]``), ``'CBT'`` ``[C, N, T]`` for ``lstm``
  (MATLAB's gate order input, forget, cell candidate, output is PyTorch's; one bias,
  PyTorch's ``b_ih + b_hh``). Losses are plain sums of weighted outputs (no
  normalisation conventions involved).
- Kinks are kept off the sample: ``relu``/``clip`` are combined with a linear term
  and inputs are continuous random numbers, so no program evaluates a derivative
  exactly at a kink or a tie, where conventions legitimately differ.
- A program whose PyTorch value is not finite is counted as skipped, not compared.
"""

from .runner import FuzzResult, plant_bug, run_fuzz

__all__ = ["FuzzResult", "plant_bug", "run_fuzz"]
