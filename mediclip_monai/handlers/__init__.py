"""Ignite handlers the bundle's workflows attach to their engines."""

from .reports import CaseIndexHandler, EvaluationReport

__all__ = ["CaseIndexHandler", "EvaluationReport"]
