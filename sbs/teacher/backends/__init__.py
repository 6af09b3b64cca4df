"""Teacher backends: a plain dict registry (`BACKENDS`) of name -> "module:Class"."""
from sbs.teacher.backends.base import BACKENDS, OUTPUT_COLUMNS, TeacherBackend, backend_class, make_backend

__all__ = ["BACKENDS", "OUTPUT_COLUMNS", "TeacherBackend", "backend_class", "make_backend"]
