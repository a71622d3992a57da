"""The Pipeline protocol and the registry of shipped pipelines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from pydicom.dataset import Dataset

from dicom_node.findings import Findings
from dicom_node.imaging.volume import Volume


@runtime_checkable
class Pipeline(Protocol):
    """A model (or classical algorithm) that turns a volume into Findings.

    ``applies_to`` gets the headers of the series (no pixel data) and returns ``None`` when the
    pipeline can run on it, or a human-readable reason why not. ``load`` turns the series' files
    into the :class:`Volume` the pipeline wants (HU volume for CT, cropped frames for US).
    ``run`` must work on the CPU and use ``device`` ("cuda" or "cpu") for torch work.

    A worker makes one instance per route's options and reuses it for every job (keep models on it,
    never a study's state), and at start calls its optional ``warm_up(device)`` method, if it has one,
    to load the model before the first study.
    """

    name: str
    version: str

    def applies_to(self, series: Sequence[Dataset]) -> str | None: ...

    def load(self, paths: Sequence[str]) -> Volume: ...

    def run(self, volume: Volume, device: str) -> Findings: ...


_FACTORIES: dict[str, Callable[..., Pipeline]] = {}


def register(name: str) -> Callable[[Callable[..., Pipeline]], Callable[..., Pipeline]]:
    """Class decorator: make a pipeline available to routes under ``name``."""

    def wrap(factory: Callable[..., Pipeline]) -> Callable[..., Pipeline]:
        _FACTORIES[name] = factory
        return factory

    return wrap


def available() -> list[str]:
    """Names of all registered pipelines."""
    _import_builtin()
    return sorted(_FACTORIES)


def check_options(name: str, options: dict[str, object]) -> None:
    """Raise ValueError if ``options`` are not keyword arguments the pipeline ``name`` accepts."""
    import inspect

    _import_builtin()
    try:
        inspect.signature(_FACTORIES[name]).bind(**options)
    except TypeError as exc:
        raise ValueError(f"options for pipeline {name!r}: {exc}") from None


def create(name: str, **options: object) -> Pipeline:
    """Instantiate the pipeline registered under ``name`` (options come from the route)."""
    _import_builtin()
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r}; available: {', '.join(sorted(_FACTORIES))}") from None
    return factory(**options)


def _import_builtin() -> None:
    # Importing the modules runs their @register decorators; heavy imports (torch) stay inside them.
    import importlib

    for module in _BUILTIN:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_BUILTIN = (
    "dicom_node.pipelines.ct_lung_field",
    "dicom_node.pipelines.ct_lung_nodule",
    "dicom_node.pipelines.us_lung",
    "dicom_node.pipelines.pet_tumour",
)
