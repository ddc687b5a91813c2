# The fuzzer's modules are a library and a command (python -m tests.fuzz), not tests:
# pytest's --doctest-modules must not import them (they need PyTorch).
collect_ignore_glob = ["*.py"]
