"""The pass manager: run passes with verification, rollback and benchmarking around each.

Each pass edits the current model in place after a clone of it was taken (tensors are
shared, not copied): that clone is the rollback point, and analyses cached on the model stay
valid across passes that preserve them. After a pass that changed something, the
verify instrument checks the candidate (structure + numerics against the reference outputs
of the input model, under the pass's tolerance class) and the on-fail policy decides:
`rollback` keeps the pre-pass model, `fail` stops the run, `warn` keeps the candidate.
With `verify="end"`, only the final model is checked and, on failure, the pass list is
bisected to find the first pass that breaks it, which is then dropped.
Growth is checked after every pass that changed something, whatever --verify says (it reads no
data): output constant data beyond what the pass declares (graphopt/size.py) is a failure
"grew the weights by X MB, declared Y MB" under the same on-fail policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import onnx_ir as ir

from graphopt.bench import BenchConfig, bench_model, bench_pair
from graphopt.deadline import OutOfTime
from graphopt.errors import InputError, VerificationError
from graphopt.io import release_mappings
from graphopt.lossy import check_run_budget, run_with_retries
from graphopt.output_kinds import infer_kinds
from graphopt.phases import phase
from graphopt.pass_api import Feed, Pass, PassContext, PassResult, structure_fingerprint, types_fingerprint
from graphopt.size import ModelSize, data_bytes, growth_problem, model_size
from graphopt.tolerance import Budget, Exact, Lossy, Reassoc, Tolerance
from graphopt.verify import Verdict, structural_problems, verify_candidate


@dataclass(frozen=True)
class RunConfig:
    verify: str = "each"  # each | end | off
    on_fail: str = "rollback"  # rollback | fail | warn
    bench: BenchConfig | None = None
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self):
        if self.verify not in ("each", "end", "off"):
            raise InputError(f"--verify: expected each, end or off, got '{self.verify}'")
        if self.on_fail not in ("rollback", "fail", "warn"):
            raise InputError(f"--on-fail: expected rollback, fail or warn, got '{self.on_fail}'")


@dataclass
class PassRecord:
    name: str
    options: dict[str, Any]
    applied: bool = False
    rolled_back: bool = False
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)
    verify: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None
    error: str | None = None
    skipped: str | None = None  # why the pass did not apply (its `requires`); it did not run


@dataclass
class RunResult:
    model: ir.Model
    passes: list[PassRecord]
    before: ModelSize
    after: ModelSize
    final: Verdict | None = None
    baseline_bench: dict[str, Any] | None = None
    final_vs_input: dict[str, Any] | None = None  # bench.bench_pair: input and final timed side by side


Progress = Callable[[str], None]


class PassManager:
    def __init__(self, passes: list[Pass], config: RunConfig, feeds: Sequence[Feed],
                 ctx: PassContext | None = None, progress: Progress | None = None):
        self.passes = passes
        self.config = config
        self.feeds = feeds
        self.ctx = ctx or PassContext(budget=config.budget)
        self.progress = progress or (lambda message: None)
        self.reference: list[Feed] | None = None  # the input model's outputs
        self.previous: list[Feed] | None = None  # the current model's outputs
        self.known_problems: frozenset[str] = frozenset()
        self.kinds: dict | None = None  # what each output is, inferred once from the reference

    def run(self, model: ir.Model, reference: list[Feed] | None = None,
            previous: list[Feed] | None = None, known_problems: frozenset[str] | None = None) -> RunResult:
        """Run every pass; `reference` = outputs of the input model on the feeds, if already known;
        `previous` = outputs of `model` when it is not the input model (a verified prefix's result);
        `known_problems` = the input's structural problems, if already known (not held against a pass)."""
        if self.config.verify != "off" or self.config.budget.limits:
            self.reference = reference if reference is not None else self._reference(model)
            self.previous = previous if previous is not None else self.reference
            self.known_problems = (known_problems if known_problems is not None
                                   else frozenset(structural_problems(model)))
            self.kinds = infer_kinds(self.reference, self.feeds) if self.reference else None
            check_run_budget(self.config.budget, self.kinds, self.ctx.logger)
        self.ctx.holdout, self.ctx.reference = self.feeds, self.reference
        if self.ctx.progress is None:
            self.ctx.progress = self.progress
        # passes edit in place; --verify end replays them from an untouched clone
        # (tensors shared; passes never write into them, so the clone stays the input model)
        needs_input = self.config.verify == "end" or self.config.bench
        input_model = model.clone() if needs_input else None
        original = input_model if self.config.verify == "end" else None
        before = model_size(model)
        baseline = self._bench(model, "input model") if self.config.bench else None
        records = []
        for i, p in enumerate(self.passes, 1):
            self.progress(f"[{i}/{len(self.passes)}] {p.name}")
            each = self.config.verify == "each"
            if each and self.config.on_fail == "rollback":
                model, record = run_with_retries(lambda m: self._run_one(p, m, each), p, model, self.ctx)
            else:
                model, record = self._run_one(p, model, verify=each)
            records.append(record)
        final = None
        if self.config.verify == "end":
            model, final = self._verify_end(original, model, records)
        final = self._check_budget(model, records) or final
        pair = self._bench_pair(input_model, model) if self.config.bench else None
        return RunResult(model, records, before, model_size(model), final, baseline, pair)

    def _reference(self, model: ir.Model) -> list[Feed]:
        from graphopt.verify import reference_outputs

        self.progress("computing reference outputs")
        return reference_outputs(model, self.feeds)

    def _run_one(self, p: Pass, model: ir.Model, verify: bool) -> tuple[ir.Model, PassRecord]:
        """Run `p` on `model` in place; a clone taken first (tensors shared) is the rollback point."""
        record = PassRecord(p.name, p.describe_options())
        reason = p.requires(model, self.ctx)
        if reason is None and isinstance(p.tolerance, Lossy) and self.ctx.deadline.expired():
            reason = "not run: no time left (--max-time)"
            self.ctx.deadline.skip(f"{p.name}: the whole pass")
        if reason is not None:
            self.ctx.no_match(p.name, "model", reason)
            record.skipped, record.stats = reason, {"skipped": reason}
            record.size = model_size(model).to_dict()
            return model, record
        backup, failure, raised, verdict = model.clone(), None, False, None
        fingerprints = (structure_fingerprint(model), types_fingerprint(model))
        bytes_before = data_bytes(model)
        start = time.perf_counter()
        try:
            with phase(f"pass {p.name}"):
                result = p.run(model, self.ctx)
            record.stats = dict(result.stats)
            failure = self._silent_change(result, fingerprints, record, verify)
            if result.modified:
                failure = growth_problem(bytes_before, data_bytes(result.model), p.declared_growth(record.stats))
            if result.modified and (ir_raised := legalize_ir_version(result.model)):
                record.stats["ir_version"] = ir_raised  # (`raised` says whether the pass raised)
        except InputError:
            raise
        except OutOfTime as exc:  # the pass's own search stops at the deadline; this one could not
            record.skipped = f"stopped: no time left (--max-time) for {exc.what}"
            result = PassResult(backup, False, {"skipped": record.skipped})  # its edits are dropped
            record.stats = dict(result.stats)
            self.ctx.no_match(p.name, "model", record.skipped)
        except Exception as exc:  # a pass bug must not leave a half-rewritten model
            failure, raised, result = f"raised {type(exc).__name__}: {exc}", True, None
        record.seconds = time.perf_counter() - start
        release_mappings(result.model if result is not None else model)  # don't keep read weights resident
        if result is not None and result.modified and verify and (failure is None or self.config.on_fail == "warn"):
            verdict = verify_candidate(result.model, self.feeds, self.previous, p.tolerance,
                                       self.config.budget, self.known_problems, self.reference, self.kinds,
                                       deployed=p.deployed_numerics)
            record.verify = verdict.summary()
            if not verdict.ok:  # after a growth failure (kept under warn) both are reported
                failure = "; ".join(([failure] if failure else []) + verdict.problems)
        record.error = failure
        if failure is not None and self.config.on_fail == "fail":
            raise VerificationError(f"pass '{p.name}' failed verification: {failure}")
        keep = failure is None or (self.config.on_fail == "warn" and not raised)
        record.applied = keep and result.modified
        record.rolled_back = not keep
        if keep:
            model = result.model
            if result.modified:
                self.ctx.invalidate(p.preserves)
                if verify and verdict.outputs is not None:
                    self.previous = verdict.outputs
        else:
            model = backup
            self.ctx.invalidate(frozenset())
        record.size = model_size(model).to_dict()
        if record.applied and self.config.bench:
            record.bench = self._bench(model, p.name)
        return model, record

    def _silent_change(self, result: PassResult, fingerprints: tuple, record: PassRecord,
                       verify: bool) -> str | None:
        """A pass that reports no change is not taken at its word: a changed graph is verified
        like any change (stats: unreported_change); changed value types or shapes alone (shape
        inference annotations) get the structural check, and a failure rolls them back."""
        if result.modified:
            return None
        if structure_fingerprint(result.model) != fingerprints[0]:
            result.modified, record.stats["unreported_change"] = True, True
            return None
        if verify and types_fingerprint(result.model) != fingerprints[1]:
            problems = [q for q in structural_problems(result.model) if q not in self.known_problems]
            if problems:
                return "reported no change but left value types/shapes the checker rejects: " + "; ".join(problems)
        return None

    def _bench_pair(self, input_model: ir.Model, model: ir.Model) -> dict[str, Any]:
        self.progress("benchmarking the input and the final model side by side")
        return bench_pair(input_model, model, self.feeds[0], self.config.bench)

    def _bench(self, model: ir.Model, label: str) -> dict[str, Any]:
        self.progress(f"benchmarking {label}")
        return bench_model(model, self.feeds[0], self.config.bench)

    def _verify_end(self, original: ir.Model, model: ir.Model,
                    records: list[PassRecord]) -> tuple[ir.Model, Verdict]:
        """Verify the final model; on failure bisect for the culprit, drop it, and retry."""
        while True:
            applied = [(p, r) for p, r in zip(self.passes, records) if r.applied]
            verdict = self._verify_chain(model, [p for p, _ in applied])
            if verdict.ok or not applied:
                return model, verdict
            culprit_pass, culprit = self._bisect(original, [p for p, _ in applied])
            record = next(r for p, r in applied if p is culprit_pass)
            record.error = "; ".join(culprit.problems)
            if self.config.on_fail != "rollback":
                if self.config.on_fail == "fail":
                    raise VerificationError(f"pass '{record.name}' failed verification: {record.error}")
                return model, verdict
            record.applied, record.rolled_back = False, True
            self.progress(f"end verification failed; rolling back '{record.name}' and re-running")
            model = self._replay(original, [p for p, r in zip(self.passes, records) if r.applied])

    def _verify_chain(self, model: ir.Model, chain: list[Pass]) -> Verdict:
        return verify_candidate(model, self.feeds, self.reference, combined_tolerance(chain),
                                self.config.budget, self.known_problems, self.reference, self.kinds)

    def _replay(self, original: ir.Model, chain: list[Pass]) -> ir.Model:
        model = original.clone()
        self.ctx.invalidate(frozenset())
        for p in chain:
            model = p.run(model, self.ctx).model
            legalize_ir_version(model)
        return model

    def _bisect(self, original: ir.Model, chain: list[Pass]) -> tuple[Pass, Verdict]:
        """Shortest failing prefix of `chain` (the whole chain fails); its last pass is the culprit."""
        verdicts: dict[int, Verdict] = {}
        lo, hi = 1, len(chain)
        while lo < hi:
            mid = (lo + hi) // 2
            verdicts[mid] = self._verify_chain(self._replay(original, chain[:mid]), chain[:mid])
            lo, hi = (mid + 1, hi) if verdicts[mid].ok else (lo, mid)
        if hi not in verdicts:
            verdicts[hi] = self._verify_chain(self._replay(original, chain[:hi]), chain[:hi])
        return chain[hi - 1], verdicts[hi]

    def _check_budget(self, model: ir.Model, records: list[PassRecord]) -> Verdict | None:
        """The run's accuracy budget, on the final model against the input model."""
        if not self.config.budget.limits:
            return None
        verdict = verify_candidate(model, self.feeds, self.reference, Lossy(self.config.budget),
                                   self.config.budget, self.known_problems, self.reference, self.kinds)
        if not verdict.ok:
            lossy = [r.name for p, r in zip(self.passes, records)
                     if r.applied and isinstance(p.tolerance, Lossy)]
            raise VerificationError("final model misses the accuracy budget: "
                                    + "; ".join(verdict.problems)
                                    + (f" (lossy passes applied: {', '.join(lossy)})" if lossy else ""))
        return verdict


def legalize_ir_version(model: ir.Model) -> str | None:
    """IR 3 requires every initializer to be a graph input; a pass that added initializers
    (folded values, fused weights, lifted constants) to an IR-3 model makes it invalid.
    IR 4 only drops that requirement, so raising 3 to 4 keeps every value and every
    consumer that reads IR 3 (ORT, the checker) reads it. Returns what changed, if anything."""
    if model.ir_version is None or model.ir_version >= 4:
        return None
    inputs = {v.name for v in model.graph.inputs}
    if all(name in inputs for name in model.graph.initializers):
        return None
    before, model.ir_version = model.ir_version, 4
    return f"{before} -> 4 (initializers that are not graph inputs need IR >= 4)"


def combined_tolerance(chain: list[Pass]) -> Tolerance:
    """The loosest tolerance class among the passes (lossy > reassoc > exact)."""
    tolerances = [p.tolerance for p in chain]
    lossy = [t for t in tolerances if isinstance(t, Lossy)]
    if lossy:
        return lossy[0]
    reassoc = [t for t in tolerances if isinstance(t, Reassoc)]
    if reassoc:
        return Reassoc(rtol=sum(t.rtol for t in reassoc), atol=sum(t.atol for t in reassoc))
    return Exact()
