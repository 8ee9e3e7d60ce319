"""The console's create forms: posted values become the OMS request, errors land next to their inputs, and
secrets are never shown again."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from ferry import oms as s
from ferry.console import form_specs as f
from ferry.oms import Codes, OmsError

SRC = {"src_node.cloud_type": ["AWS"], "src_node.region": ["us-east-1"], "src_node.bucket": ["src"],
       "src_node.ak": ["SRC-AK"], "src_node.sk": ["SRC-SK"]}
DST = {"dst_node.region": ["cn-north-4"], "dst_node.bucket": ["dst"], "dst_node.ak": ["DST-AK"],
       "dst_node.sk": ["DST-SK"]}
# What a browser posts for an untouched new form: every select at its initial value, text inputs empty.
UNTOUCHED = {i.name: ([] if i.kind in ("checkbox", "checkboxes") else [str(v) if (v := f.initial(f.TASK_FORM).get(
    i.name)) is not None else ""]) for i in f.TASK_FORM.inputs()}


def posted(**values: list[str]) -> dict[str, list[str]]:
    return {**UNTOUCHED, **SRC, **DST, **values}


def test_a_prefix_task_form_is_the_request_the_api_takes() -> None:
    form = posted(task_type=["prefix"], **{"src_node.object_key": ["logs/\r\n\r\nimg/\r\n"],
                                           "enable_failed_object_recording": ["on"],
                                           "bandwidth_policy[2].start": ["01:00"],
                                           "bandwidth_policy[2].end": ["02:30"],
                                           "bandwidth_policy[2].max_bandwidth": ["2097152"],
                                           "src_node.list_file.obs_bucket": ["ignored for a prefix task"]})
    data = f.request_data(f.TASK_FORM, form)
    req = s.CreateTaskReq.model_validate(data)
    assert req.task_type is s.TaskType.PREFIX and req.src_node.object_key == ["logs/", "img/"]
    assert req.src_node.list_file is None and req.source_cdn is None and req.smn_config is None
    assert req.bandwidth_policy is not None and [(p.start, p.end, p.max_bandwidth) for p in req.bandwidth_policy] == [
        ("01:00", "02:30", 2097152)]
    assert req.enable_failed_object_recording and not req.enable_restore
    assert req.src_node.sk is not None and req.src_node.sk.reveal() == "SRC-SK"


def test_errors_sit_next_to_their_inputs_and_secrets_are_not_echoed() -> None:
    calls: list[Any] = []
    form = posted(task_type=["list"], description=["a<b"], **{"dst_node.region": [""],
                                                               "bandwidth_policy[0].start": ["25:00"]})
    out = f.submit(f.TASK_FORM, form, calls.append)  # type: ignore[arg-type]
    assert out.created is None and not calls
    assert {k: [e.code for e in v] for k, v in out.errors.items()} == {
        "description": [Codes.DESCRIPTION_CHARS],
        "dst_node.region": [Codes.INVALID_PARAMETER],
        "bandwidth_policy[0].start": [Codes.INVALID_PARAMETER],
        # A window begun is a window whose other inputs are required.
        "bandwidth_policy[0].end": [Codes.INVALID_PARAMETER],
        "bandwidth_policy[0].max_bandwidth": [Codes.INVALID_PARAMETER],
    }
    assert out.errors["bandwidth_policy[0].end"][0].message == "is required"
    assert out.values["description"] == "a<b" and out.values["src_node.bucket"] == "src"
    shown = repr(out.values)
    for secret in ("SRC-AK", "SRC-SK", "DST-AK", "DST-SK"):
        assert secret not in shown
    # Once the rest is right, a list task without its list file is told so at the list file's inputs.
    out = f.submit(f.TASK_FORM, posted(task_type=["list"]), calls.append)  # type: ignore[arg-type]
    assert set(out.errors) == {"src_node.list_file.list_file_key", "src_node.list_file.obs_bucket"}


def test_a_service_refusal_is_shown_at_the_inputs_it_concerns() -> None:
    def refuse(code: str, message: str) -> f.Outcome:
        def create(_: Any) -> str:
            raise OmsError(400, code, message)
        return f.submit(f.TASK_FORM, posted(task_type=["prefix"]), create)

    assert set(refuse(Codes.SRC_AUTH, "The source AK/SK is invalid.").errors) == {"src_node.ak", "src_node.sk"}
    named = refuse(Codes.INVALID_PARAMETER, "Invalid parameter settings. dst_node.bucket: bad name")
    assert set(named.errors) == {"dst_node.bucket"}
    general = refuse(Codes.QUOTA, "The number of tasks you created exceeds the limit.")
    assert set(general.errors) == {f.GENERAL} and general.errors[f.GENERAL][0].code == Codes.QUOTA


def test_inputs_take_their_limits_and_choices_from_the_model() -> None:
    inputs = {i.name: i for i in f.SYNC_FORM.inputs()}
    assert inputs["src_bucket"].limits == {"maxlength": 1024, "minlength": 1} and inputs["src_bucket"].required
    assert inputs["src_sk"].secret and inputs["src_ak"].secret and not inputs["src_bucket"].secret
    assert inputs["consistency_check"].choices == tuple(c.value for c in s.ConsistencyCheck)
    assert "URLSource" not in inputs["src_cloud_type"].choices
    group = {i.name: i for i in f.GROUP_FORM.inputs()}
    assert group["task_type"].choices == ("PREFIX", "LIST", "URL_LIST")
    assert group["smn_config.trigger_conditions"].kind == "checkboxes"
    assert group["bandwidth_policy[4].max_bandwidth"].limits == {"min": s.MIN_BANDWIDTH, "max": s.MAX_BANDWIDTH}


def _leaves(model: type[BaseModel]) -> set[str]:
    """Every field a request body can carry, as form input names (`[]` for a row of a repeated section)."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    out: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        while "$ref" in node or any(b.get("type") == "null" for b in node.get("anyOf", ())):
            if "$ref" in node:
                node = defs[node["$ref"].rsplit("/", 1)[1]]
            else:
                node = next(b for b in node["anyOf"] if b.get("type") != "null")
        items = node.get("items", {})
        if node.get("type") == "array" and "properties" in defs.get(items.get("$ref", "").rsplit("/", 1)[-1], {}):
            walk(items, prefix + "[]")  # rows of objects (bandwidth windows)
        elif "properties" in node:
            for name, child in node["properties"].items():
                walk(child, f"{prefix}.{name}" if prefix else name)
        else:
            out.add(prefix)

    walk(schema, "")
    return out


def test_every_create_form_takes_every_field_of_its_request() -> None:
    for spec in (f.TASK_FORM, f.GROUP_FORM, f.SYNC_FORM):
        names = {re.sub(r"\[\d+\]", "[]", i.name) for i in spec.inputs()}
        assert _leaves(spec.model) - names == set(), spec.key
