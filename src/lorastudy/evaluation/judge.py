"""A pass verdict decided outside the sandbox: the benchmark's `check` replayed, in the trusted evaluator, on the
candidate's return values as plain data.

`record` runs a task's reference solution under its own `check` and notes every call `check` makes (its
arguments, as plain data). A candidate is then run in the sandbox on exactly those arguments and returns its
values (lorastudy.evaluation.sandbox.run_calls); `replay` runs `check` again, here, against a stand-in that
answers each call with the candidate's value. The candidate never sees `check`, its expected values or the
harness, so it cannot pass by tampering with them, and a value whose equality is forged is not plain.

A task cannot be replayed when `check` passes its candidate something that is not plain data, when the
reference's values are not plain, or when `check` does not pass on the reference's own recorded values (its
control flow or arguments depend on side effects): its samples are run with the whole program and `check` in
the sandbox instead, and marked as such (the fallback rate is reported).
"""
from __future__ import annotations

import builtins
import random
import threading
from dataclasses import dataclass
from typing import Any

from lorastudy.data.records import CodeTask
from lorastudy.evaluation import plain

_lock = threading.Lock()  # the replay seeds the global `random` (checks draw their inputs from it)


@dataclass(frozen=True)
class Recording:
    """The calls a task's `check` makes, as plain data ((args, kwargs) each), or why it cannot be replayed."""

    calls: tuple[str, ...]
    reason: str = ""

    @property
    def replayable(self) -> bool:
        return not self.reason


class _Diverged(Exception):
    """`check` asked for a call that was not recorded: its flow depends on more than return values."""


def _namespace(task: CodeTask) -> dict[str, Any]:
    """The reference program without its final check call: the prompt's helpers, the reference solution, and
    `check`, as the harness defines them in one module."""
    ns: dict[str, Any] = {"__name__": "__judge__", "__builtins__": builtins}
    exec(compile(task.prompt + task.canonical_solution + "\n" + task.test, f"<{task.task_id}>", "exec"), ns)
    return ns


def _seeded(fn: Any) -> Any:
    """Run fn with `random` seeded as in every other run of the same check, then the caller's state back."""
    with _lock:
        state = random.getstate()
        random.seed(0)
        try:
            return fn()
        finally:
            random.setstate(state)


def record(task: CodeTask) -> Recording:
    """The calls `check` makes on the reference solution; not replayable (with the reason) where it cannot be."""
    calls: list[str] = []
    values: list[dict[str, Any]] = []
    try:
        ns = _namespace(task)
        reference = ns[task.entry_point]

        def recorder(*args: Any, **kwargs: Any) -> Any:
            calls.append(plain.dumps([list(args), kwargs]))
            value = reference(*args, **kwargs)
            values.append({"value": plain.encode(value)})
            return value

        _seeded(lambda: ns["check"](recorder))
    except KeyboardInterrupt:
        raise
    except plain.Unplain as err:
        return Recording((), f"not plain data: {err}")
    except BaseException as err:  # noqa: BLE001 - a reference that fails its own check is the benchmark's fault
        return Recording((), f"the reference fails its check: {type(err).__name__}: {err}"[:300])
    if not calls:
        return Recording((), "check never calls its candidate")
    recording = Recording(tuple(calls))
    passed, detail = replay(task, recording, values)
    return recording if passed else Recording((), f"the reference's own values do not replay: {detail}")


def replay(task: CodeTask, recording: Recording, results: list[dict[str, Any]]) -> tuple[bool | None, str]:
    """(passed, why not) of `check` answered call by call from `results` (one {"value"} or {"raised"} per
    recorded call); passed None when check's flow left the recording (run the whole program instead)."""
    count = [0]

    def candidate(*args: Any, **kwargs: Any) -> Any:
        i = count[0]
        count[0] += 1
        if i >= len(recording.calls) or plain.dumps([list(args), kwargs]) != recording.calls[i]:
            raise _Diverged(f"call {i + 1} was not recorded")
        if i >= len(results):
            raise AssertionError(f"no value for call {i + 1}")
        result = results[i]
        if "raised" in result:
            kind = getattr(builtins, str(result["raised"]), None)
            kind = kind if isinstance(kind, type) and issubclass(kind, Exception) else RuntimeError
            raise kind(f"the candidate raised {result['raised']} on call {i + 1}")
        if "unplain" in result:
            raise plain.Unplain(str(result["unplain"]))
        return plain.decode(result["value"])

    try:
        ns = _namespace(task)
        _seeded(lambda: ns["check"](candidate))
    except KeyboardInterrupt:
        raise
    except _Diverged as err:
        return None, str(err)
    except plain.Unplain as err:
        return False, f"returned a value that is not plain data ({err})"
    except BaseException as err:  # noqa: BLE001 - check's failure is the candidate's: say which
        text = f"{type(err).__name__}: {err}".strip().rstrip(":")
        return False, text[:300]
    return True, ""
