"""Keeping TensorFlow's start-up noise off the terminal (``--verbose`` shows it).

Importing TensorFlow prints 3 to 9 lines on stderr: the absl notice "All log messages before absl::InitializeLog()
is called are written to STDERR", "oneDNN custom operations are on", "Could not find cuda drivers on your machine",
a CPU feature notice and, on machines without a GPU, an ``E`` line "failed call to cuInit". None of them is about
the user's work. Most are logged by C++ code before absl's logging is initialised, where ``TF_CPP_MIN_LOG_LEVEL``
does not reach, so two things are done, both before TensorFlow is imported:

1. ``TF_CPP_MIN_LOG_LEVEL=2`` (unless the user set it) for what TensorFlow logs after start-up;
2. a finder on ``sys.meta_path`` wraps the first ``import tensorflow``, wherever it happens, so that while the
   package executes, and while it lists the physical devices right after (which is where CUDA is probed and the
   cuInit line comes from; listing them leaves every device setting open), file descriptor 2 points at a temporary
   file; afterwards the known start-up lines are dropped and every other line is written to stderr as it came (a
   real error during the import is never lost).

The import stays lazy: a command that is refused by its checks, or never needs TensorFlow, never imports it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

#: Lines TensorFlow prints while it starts, never about the user's work.
START_UP_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] "),  # absl/glog INFO and WARNING records
    re.compile(r"^E\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] .*(cuInit|cuda|CUDA|cuDNN|cuFFT|cuBLAS|TensorRT)"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"),
)


def is_start_up_noise(line: str) -> bool:
    return any(pattern.search(line) for pattern in START_UP_NOISE)


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Point file descriptor 2 at a temporary file for the block, then write back what is not start-up noise.

    Descriptor 2 itself, not ``sys.stderr.fileno()``: native code writes to 2 whatever Python's stream became.
    """
    stderr_fd = 2
    try:
        captured = tempfile.TemporaryFile()
    except OSError:  # no temporary file: TensorFlow's lines then reach stderr, which is only untidy
        yield
        return
    with captured:
        try:
            saved = os.dup(stderr_fd)
        except OSError:  # no descriptor 2 at all (a daemon started without one): nothing reaches a terminal anyway
            yield
            return
        _flush(sys.stderr)
        os.dup2(captured.fileno(), stderr_fd)
        try:
            yield
        finally:
            _flush(sys.stderr)
            os.dup2(saved, stderr_fd)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_start_up_noise(line.rstrip("\n"))]
            if kept:
                os.write(stderr_fd, "".join(kept).encode("utf-8", "replace"))


def _flush(stream: Any) -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        stream.flush()


def _probe_devices(module: ModuleType) -> None:
    """List TensorFlow's physical devices, so that CUDA is probed while stderr is filtered. Listing physical devices
    does not initialise the runtime: visibility and memory growth can still be set afterwards."""
    with contextlib.suppress(Exception):  # a failed probe is TensorFlow's to report later, never the import's
        module.config.list_physical_devices()


class _QuietLoader(importlib.abc.Loader):
    """Executes a module with :func:`filtered_native_stderr`, then ``after(module)`` inside the same filter;
    everything else is the real loader's."""

    def __init__(self, loader: Any, after: Callable[[ModuleType], None] | None = None) -> None:
        self._loader = loader
        self._after = after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            with filtered_native_stderr():
                self._loader.exec_module(module)
                if self._after is not None:
                    self._after(module)
        finally:  # the module keeps its real loader, as if nothing had been in between
            module.__loader__ = self._loader
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader

    def __getattr__(self, name: str) -> Any:  # is_package, get_filename, get_resource_reader, ...
        return getattr(self._loader, name)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first import of one top-level package; removes itself when it is used."""

    def __init__(self, package: str, after: Callable[[ModuleType], None] | None = None) -> None:
        self.package = package
        self.after = after

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.package:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self.after)
        return spec


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up lines off stderr in this process (see the module docstring); idempotent, and
    nothing to do when TensorFlow is already imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.WARNING)
    # On the JAX backend: its start-up probe for TPUs and GPUs logs at INFO ("Unable to initialize backend 'tpu'").
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietImportFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImportFinder("tensorflow", after=_probe_devices))
