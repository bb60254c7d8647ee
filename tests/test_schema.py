"""The field checks every validating reader shares (run folders, analysis files, export manifests)."""
import math

import pytest

from cifar_core import schema
from cifar_core.errors import RunFolderError
from cifar_core.export import ExportError

NOT_NUMBERS = [True, False, "1", None, [1], {"a": 1}]


@pytest.mark.parametrize("check,accepted,refused", [
    (schema.number, [0, -3, 2.5, math.inf], NOT_NUMBERS),
    (schema.finite, [0, -3, 2.5], [math.inf, -math.inf, math.nan, *NOT_NUMBERS]),
    (schema.fraction, [0, 0.0, 0.5, 1, 1.0], [-1e-9, 1.000001, math.nan, *NOT_NUMBERS]),
    (schema.non_negative, [0, 0.0, 3, 1e9], [-1e-9, -1, math.inf, math.nan, *NOT_NUMBERS]),
    (schema.count, [0, 7, 10 ** 12], [-1, 1.0, True, "3", None]),
    (schema.text, ["", "x"], [1, None, b"x", ["x"]]),
    (schema.flag, [True, False], [0, 1, "true", None]),
    (schema.json_object, [{}, {"a": 1}], [[], "x", None]),
    (schema.texts, [[], ["a", "b"]], [["a", 1], "ab", ("a",), None]),
    (schema.counts, [[], [0, 3]], [[0, -1], [1.0], [True], (1,), None]),
    (schema.plain_name, ["model.onnx", ".hidden", "a..b", "run-1"],
     ["", ".", "..", "a/b", "../x", "/etc", "a\\b", "x/", None, 3, ["x"]]),
])
def test_each_check_accepts_its_kind_and_nothing_else(check, accepted, refused):
    assert all(check(value) is True for value in accepted)
    assert not any(check(value) for value in refused)


def test_combined_checks_hold_every_item_and_field():
    pair = schema.list_of(schema.count, length=2)
    assert schema.list_of(schema.count)([]) and schema.list_of(schema.count)([1, 2, 3])
    assert not schema.list_of(schema.count)([1, -2]) and not schema.list_of(schema.count)((1, 2))
    assert pair([1, 2]) and not pair([1]) and not pair([1, 2, 3]) and not pair([1, "2"])
    point = schema.record({"x": schema.finite, "label": schema.text})
    assert point({"x": 1.5, "label": "cat"}) and point({"x": 1, "label": "", "extra": None})
    assert not point({"x": 1.5}) and not point({"x": math.nan, "label": "cat"}) and not point([1.5, "cat"])
    maybe = schema.optional(schema.fraction)
    assert maybe(None) and maybe(0.5) and not maybe(2) and not maybe("0.5")


def test_validate_names_the_first_wrong_field_with_the_readers_error():
    fields = {"accuracy": schema.fraction, "name": schema.text}
    sound = {"accuracy": 0.5, "name": "run", "newer": [1]}
    assert schema.validate(sound, fields, ("accuracy",), "metrics.json") is sound  # unknown fields kept
    assert schema.validate({"accuracy": 0.5, "name": None}, fields, ("accuracy",), "m") == {"accuracy": 0.5,
                                                                                         "name": None}
    with pytest.raises(RunFolderError, match=r"^metrics.json must be a JSON object; found list$"):
        schema.validate([sound], fields, (), "metrics.json")
    for missing in ({"name": "run"}, {"accuracy": None}):
        with pytest.raises(RunFolderError, match=r"^metrics.json has no accuracy$"):
            schema.validate(missing, fields, ("accuracy",), "metrics.json")
    with pytest.raises(ExportError, match=r"^entry: name has an unexpected value 7$"):
        schema.validate({"accuracy": 0.5, "name": 7}, fields, (), "entry", ExportError)
    with pytest.raises(RunFolderError, match=r"accuracy has an unexpected value 1\.5"):
        schema.validate({"accuracy": 1.5, "name": 7}, fields, (), "m")  # the first wrong field, in schema order


def test_a_preview_keeps_sixty_characters_at_most():
    assert schema.preview("x" * 58) == "'" + "x" * 58 + "'"  # 60 with the quotes: kept whole
    assert schema.preview("x" * 59) == "'" + "x" * 56 + "..."
    assert len(schema.preview(list(range(100)))) == 60
