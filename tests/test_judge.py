"""Plain data and the replayed check: values round-trip exactly by type, anything else is refused; a check is
recorded on the reference and replayed on a candidate's values; a check that cannot be replayed falls back to
the whole program in the sandbox, and says so."""
from __future__ import annotations

import collections
import math

import pytest

from lorastudy.data.records import CodeTask
from lorastudy.evaluation import plain
from lorastudy.evaluation.code import evaluate_samples
from lorastudy.evaluation.judge import record, replay


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2**100, 1.5, -0.0, math.inf, "é\udcff", "\ud83d\ude00", b"\x00\xff", 1 + 2j, [1, [2]],
    (1, (2,)), {1, 2},
    frozenset({"a"}), {"k": [1, (2, 3)], 4: None, (1, 2): {5}}, [], (), {},
    collections.Counter("abca"), collections.OrderedDict([("b", 1), ("a", 2)]),
])
def test_plain_values_round_trip_with_their_types(value) -> None:
    back = plain.loads(plain.dumps(value))
    assert back == value and type(back) is type(value)


EVERY_CHAR = "".join(map(chr, range(0x800))) + "\ud800\udfff\U0001f600 \u2028\u2029\x7f\\\"'"


@pytest.mark.parametrize("value", [
    EVERY_CHAR, [EVERY_CHAR, {"k\n\"": EVERY_CHAR[::-1]}], 10**4000, -(2**64), 5e-324, 1.7976931348623157e308,
    0.1, -0.0, 123456789.125, [None, True, False, [], {}], {"": ""}, "x" * 100_000,
])
def test_plain_json_text_reads_back_as_jsons_own(value) -> None:
    """The sandbox writes values with plain.to_json (no json module in there); the evaluator reads them with
    json: each must give exactly the value json.dumps's text gives, and be valid UTF-8."""
    import json

    data = plain.encode(value)
    text = plain.to_json(data)
    assert text.encode("utf-8").decode("utf-8") == text
    assert json.loads(text.encode("utf-8")) == json.loads(json.dumps(data)) == data
    assert repr(json.loads(text)) == repr(data)  # -0.0 and float reprs too
    assert plain.loads(text) == value


def test_plain_json_text_escapes_lone_surrogates_left_in_raw_strings() -> None:
    # encode tags strings with surrogates, but the bootstrap also writes raw strings (an exception's name or
    # message): those must still be valid UTF-8 text that json reads back exactly
    import json

    text = plain.to_json({"raised": "E\ud800x", "unplain": "\udfff"})
    assert json.loads(text.encode("utf-8")) == {"raised": "E\ud800x", "unplain": "\udfff"}


def test_plain_json_text_refuses_what_encode_never_returns() -> None:
    for data in ({1: 2}, (1,), b"x", object()):
        with pytest.raises(plain.Unplain):
            plain.to_json(data)


def test_nan_round_trips() -> None:
    assert math.isnan(plain.loads(plain.dumps(math.nan)))


class Equal:
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value", [Equal(), type("S", (str,), {})("x"), iter([1]), [Equal()], {1: object()},
                                   type("I", (int,), {})(3), range(3)])
def test_what_is_not_plain_is_refused(value) -> None:
    with pytest.raises(plain.Unplain):
        plain.dumps(value)


def test_nesting_and_size_are_bounded() -> None:
    deep = []
    for _ in range(plain.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(plain.Unplain, match="deeper"):
        plain.dumps(deep)
    with pytest.raises(plain.Unplain, match="elements"):
        plain.dumps(list(range(plain.MAX_ITEMS + 1)))
    with pytest.raises(plain.Unplain):
        plain.loads("[" * 100_000 + "]" * 100_000)  # the JSON decoder's recursion, caught


@pytest.mark.parametrize("text", ['{"tuple": 1}', '{"a": 1, "b": 2}', '{"set": [[1]]}', '{"bytes": "zz"}',
                                  "not json", '{"float": "1.0"}', '{"dict": [[[1], 2]]}', '{"str": "zz"}',
                                  '{"str": "00d8"}'])
def test_malformed_payloads_are_unplain(text: str) -> None:
    with pytest.raises(plain.Unplain):
        plain.loads(text)


TASK = CodeTask(
    task_id="T/0", prompt="def f(xs, scale=1):\n", canonical_solution="    return [x * scale for x in xs]\n",
    test="def check(candidate):\n    assert candidate([1, 2]) == [1, 2]\n    assert candidate([3], scale=2) == [6]\n"
         "    import random\n    x = random.randint(0, 10**6)\n    assert candidate([x]) == [x]\n", entry_point="f")


def test_a_check_is_recorded_on_the_reference_and_replayed_on_values() -> None:
    rec = record(TASK)
    assert rec.replayable and len(rec.calls) == 3
    assert plain.loads(rec.calls[1]) == [[[3]], {"scale": 2}]
    assert record(TASK).calls == rec.calls  # `random` is seeded: the same inputs every time
    x = plain.loads(rec.calls[2])[0][0][0]
    good = [{"value": plain.encode([1, 2])}, {"value": plain.encode([6])}, {"value": plain.encode([x])}]
    assert replay(TASK, rec, good) == (True, "")
    wrong = [*good[:2], {"value": plain.encode([x + 1])}]
    assert replay(TASK, rec, wrong)[0] is False
    assert replay(TASK, rec, [good[0], {"raised": "ValueError"}, good[2]])[0] is False
    assert replay(TASK, rec, [good[0], {"unplain": "a value of type 'Equal'"}, good[2]]) == (
        False, "returned a value that is not plain data (a value of type 'Equal')")
    assert replay(TASK, rec, good[:2])[0] is False  # a missing value fails, never passes


def test_a_check_whose_flow_depends_on_the_values_leaves_the_recording() -> None:
    task = CodeTask("T/1", "def g(n):\n", "    return n + 1\n",
                    "def check(candidate):\n    r = candidate(1)\n    assert candidate(r) == 3\n", "g")
    rec = record(task)
    assert rec.replayable
    passed, detail = replay(task, rec, [{"value": 5}, {"value": 3}])  # candidate(5) was never recorded
    assert passed is None and "not recorded" in detail
    result = evaluate_samples([{"task_id": "T/1", "completion": "    return n + 1\n"},
                               {"task_id": "T/1", "completion": "    return n + 4 if n == 1 else 3\n"}],
                              {"T/1": task}, progress=False)
    assert [s["passed"] for s in result["samples"]] == [True, True]
    assert [s["judged"] for s in result["samples"]] == ["replayed", "in sandbox"]
    assert result["fallback_rate"] == 0.5


def test_a_task_whose_check_passes_what_is_not_plain_runs_in_the_sandbox_and_is_counted() -> None:
    task = CodeTask("T/2", "def h(o):\n", "    return o.x\n",
                    "class O:\n    x = 4\n\ndef check(candidate):\n    assert candidate(O()) == 4\n", "h")
    assert "not plain" in record(task).reason
    result = evaluate_samples([{"task_id": "T/2", "completion": "    return o.x\n"},
                               {"task_id": "T/2", "completion": "    return 5\n"}], {"T/2": task}, progress=False)
    assert [s["passed"] for s in result["samples"]] == [True, False]
    assert {s["judged"] for s in result["samples"]} == {"in sandbox"}
    assert result["fallback_rate"] == 1.0 and "T/2" in result["fallback_tasks"]


def test_a_reference_that_fails_its_own_check_is_not_replayable() -> None:
    task = CodeTask("T/3", "def k():\n", "    return 1\n", "def check(candidate):\n    assert candidate() == 2\n", "k")
    assert "fails its check" in record(task).reason
