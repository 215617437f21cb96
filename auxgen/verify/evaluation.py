"""Check 1, evaluation: re-run the primary-task test evaluation of a checkpoint and compare it with
the accuracy the run recorded (exact on the same device and dtype)."""

from __future__ import annotations

import json

from auxgen.data import Data
from auxgen.run import LoadedRun
from auxgen.trainer import evaluate, precision_of
from auxgen.verify.result import CheckResult, problems_reason


def check_evaluation(run: LoadedRun, data: Data, tolerance: float = 0.0) -> CheckResult:
    """Evaluate the checkpoint on the test split exactly as training did and compare."""
    cfg = run.cfg
    recorded = run.recorded_test_acc()
    ev = evaluate(run.model, data.test, run.device, cfg.eval_batch_size, cfg.gamma, precision_of(cfg, run.device))
    recorded_data = run.meta.get("data", {})
    now = {"fingerprint": data.fingerprint(), "train_fingerprint": data.split_fingerprint("train"),
           "test_fingerprint": data.split_fingerprint("test")}
    changed = [k for k, v in now.items() if recorded_data.get(k) != v]
    problems = []
    named_changes = False  # the accuracy problem already names the changed fingerprints
    if run.state.get("data_fingerprint") not in (None, recorded_data.get("fingerprint")):
        problems.append("the checkpoint records a different dataset fingerprint than config.json "
                        "(the checkpoint comes from another run)")
    history_acc = _history_acc(run)
    if history_acc is not None and recorded is not None and history_acc != recorded:
        problems.append(f"metrics.jsonl records test_acc {history_acc:.6f} for epoch {run.state.get('epoch')} "
                        f"but the checkpoint says {recorded:.6f}")
    figures = {"recorded_acc": recorded, "acc": ev["acc"], "loss": ev["loss"], "n": ev["n"],
               "diff": None if recorded is None else ev["acc"] - recorded, "tolerance": tolerance,
               "epoch": run.state.get("epoch"), "device": str(run.device), "run_device": run.meta.get("device"),
               "changed_fingerprints": changed, "checkpoint_sha256": run.checkpoint_sha256}
    if recorded is None:
        problems.append("the checkpoint records no test accuracy")
    elif abs(ev["acc"] - recorded) > tolerance:
        why = (f"the data changed ({', '.join(changed)} differ)" if changed else
               "all recorded data fingerprints match, so the checkpoint weights or the code changed")
        problems.append(f"test accuracy {ev['acc']:.6f} != recorded {recorded:.6f} "
                        f"(diff {ev['acc'] - recorded:+.6f}, tolerance {tolerance}): {why}")
        named_changes = bool(changed)
    if changed and not named_changes:
        problems.append(f"the dataset changed since training: {', '.join(changed)} differ from config.json")
    if str(run.device) != str(run.meta.get("device")) and tolerance == 0.0 and problems:
        problems.append(f"note: evaluated on {run.device} but trained on {run.meta.get('device')}; "
                        f"other devices may need --tolerance")
    if problems:
        return CheckResult("evaluation", "fail", problems_reason(problems), figures)
    return CheckResult("evaluation", "pass",
                       f"test accuracy {ev['acc']:.6f} equals the recorded {recorded:.6f} "
                       f"(epoch {run.state.get('epoch')}, {ev['n']} test samples)", figures)


def _history_acc(run: LoadedRun) -> float | None:
    path = run.run_dir / "metrics.jsonl"
    epoch = run.state.get("epoch")
    if not path.is_file() or epoch is None:
        return None
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("epoch") == epoch:
            return row.get("test_acc")
    return None
