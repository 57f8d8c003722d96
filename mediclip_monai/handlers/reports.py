"""Ignite handlers of the inference and evaluation recipes (``val_handlers`` of ``engines.CaseEvaluator``).

- ``CaseIndexHandler``: when a run (or one rank of it) completes, rebuild the output folder's
  ``scores.csv`` and ``cases.json`` from the case manifests on disk (``io.outputs.rebuild_index``).
- ``EvaluationReport``: collect each case's score, truth and review slices, and when the run completes
  write metrics.json, cases.csv, roc.png and montage.png (``reporting.report.write_report``), on rank 0 with
  the cases of every rank.
"""

from __future__ import annotations

import logging

import torch.distributed as dist
from ignite.engine import Engine, Events

from ..decisions import BranchDecisions, Decisions
from ..errors import writing_into
from ..io.atomic import require_writable
from ..io.outputs import SCORES_FILE, BackgroundWrites, rebuild_index
from ..reporting.report import MONTAGE_CASES, case_panels, case_record, write_report
from ..workflows.engines import FAILURE_KEY, is_distributed

__all__ = ["CaseIndexHandler", "EvaluationReport"]

logger = logging.getLogger(__name__)


def _cases(engine: Engine) -> list[dict]:
    """The postprocessed cases of the last iteration that have a prediction (not failed, not idle), each
    its (decollated) batch entry and output together."""
    output, batch = engine.state.output or [], engine.state.batch
    batch = batch if isinstance(batch, list) and len(batch) == len(output) else [{}] * len(output)
    return [{**b, **o} for b, o in zip(batch, output) if isinstance(o, dict) and o.get("pred") is not None]


class CaseIndexHandler:
    """Rebuild ``<output_dir>/scores.csv`` and ``cases.json`` from the case folders when the run completes.

    Args:
        output_dir: the inference output folder.
        writes: the run's `io.outputs.BackgroundWrites`: waited for first, its failures added to the engine's
            (``engines.CaseEvaluator`` reports them with the others).
    """

    def __init__(self, output_dir: str, writes: BackgroundWrites | None = None) -> None:
        self.output_dir = output_dir
        self.writes = writes

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.writes is not None:
            for failure in self.writes.wait():
                logger.error(failure)
                engine.failures.append(failure)
        with writing_into(f"--output_dir {self.output_dir}", f"while writing {SCORES_FILE}"):
            manifests = rebuild_index(self.output_dir)
        failed = len(getattr(engine, "failures", []))
        logger.info(f"{self.output_dir}: {len(manifests)} case(s) listed in scores.csv, {failed} failed in this run")


class EvaluationReport:
    """Collect the evaluation's cases and write its report when the run completes.

    Args:
        output_dir: where metrics.json, cases.csv, roc.png and montage.png go.
        decisions: the run's decisions on the map evaluated (its branch and thresholds, recorded).
        model_decisions: the model's decisions (each branch's fitted thresholds, recorded beside its metrics).

    The report is written only when every case was evaluated: metrics over part of a test set would
    mislead, so with failed cases nothing is written and the evaluator's error lists them. A folder that
    cannot be written is refused when the handler is made, before any case is evaluated.
    """

    def __init__(
        self,
        output_dir: str,
        decisions: BranchDecisions,
        model_decisions: Decisions | None = None,
    ) -> None:
        require_writable(output_dir, "--output_dir")
        self.output_dir = output_dir
        self.decisions, self.model_decisions = decisions, model_decisions
        self.reset()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.records: list[dict] = []
        self.shown: list[dict] = []  # candidates for the montage: at most the highest and lowest few
        self.failed = 0

    def collect(self, engine: Engine) -> None:
        output = engine.state.output or []
        self.failed += sum(1 for o in output if isinstance(o, dict) and o.get(FAILURE_KEY))
        for case in _cases(engine):
            record = case_record(case)
            self.records.append(record)
            self.shown.append({**record, "slices": case_panels(case)})
        if len(self.shown) > 2 * MONTAGE_CASES:
            self.shown = _extremes(self.shown)

    def write(self, engine: Engine) -> None:
        records, shown, failed = self.records, self.shown, self.failed
        if is_distributed():
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (records, shown, failed))
            records = [r for part in gathered for r in part[0]]
            shown = [s for part in gathered for s in part[1]]
            failed = sum(part[2] for part in gathered)
            if dist.get_rank() != 0:
                return
        if failed:
            logger.error(f"evaluation report not written: {failed} case(s) failed (listed below)")
            return
        with writing_into(self.output_dir, "while writing the evaluation report"):
            write_report(
                self.output_dir, records, engine.state.metrics, _extremes(shown), self.decisions, self.model_decisions
            )


def _extremes(cases: list[dict]) -> list[dict]:
    """The MONTAGE_CASES highest-scoring cases, then the MONTAGE_CASES lowest (no case twice)."""
    ranked = sorted(cases, key=lambda c: (-c["score"], c["name"]))
    return ranked[:MONTAGE_CASES] + ranked[MONTAGE_CASES:][-MONTAGE_CASES:]
