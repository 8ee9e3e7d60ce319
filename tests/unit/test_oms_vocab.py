"""The OMS vocabulary (`ferry.oms`): each enum, alias and region list defined once, requests validated once
into the engine's types, regions read from the storage profiles."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import ferry
from ferry import oms
from ferry.engine.compare import ConsistencyCheck, OverwriteMode
from ferry.errors import UsageError
from ferry.service import endpoints
from ferry.storage.profiles import get_profile

SRC = {"cloud_type": "Aliyun", "region": "cn-hangzhou", "ak": "SAK", "sk": "SSK", "bucket": "srcb"}
DST = {"ak": "DAK", "sk": "DSK", "bucket": "dstb", "region": "cn-north-4"}
SYNC = {"src_region": "cn-hangzhou", "src_bucket": "b", "src_ak": "a", "src_sk": "k", "dst_ak": "a", "dst_sk": "k",
        "dst_region": "cn-north-4", "dst_bucket": "b"}
BODIES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (oms.CreateTaskReq, {"src_node": SRC, "dst_node": DST}),
    (oms.CreateTaskGroupReq, {"src_node": SRC, "dst_node": DST}),
    (oms.CreateSyncTaskReq, SYNC),
]
SRC_TREE = Path(ferry.__file__).parent


@pytest.mark.parametrize(("model", "body"), BODIES)
def test_requests_validate_into_the_engine_enums(model: type[BaseModel], body: dict[str, Any]) -> None:
    req = oms.parse_request(model, {**body, "consistency_check": "Transmission"})
    assert req.consistency_check is ConsistencyCheck.NO_CHECK  # type: ignore[attr-defined]
    req = oms.parse_request(model, {**body, "consistency_check": "CRC64"})
    assert req.consistency_check is ConsistencyCheck.CRC64  # type: ignore[attr-defined]
    if "object_overwrite_mode" in model.model_fields:
        req = oms.parse_request(model, {**body, "object_overwrite_mode": "full_overwrite"})
        assert req.object_overwrite_mode is OverwriteMode.FULL_OVERWRITE  # type: ignore[attr-defined]
    with pytest.raises(oms.OmsError) as info:
        oms.parse_request(model, {**body, "consistency_check": "md5"})
    assert "consistency_check" in info.value.error_msg


def test_the_cli_reads_the_same_alias_table() -> None:
    assert ConsistencyCheck.parse(" TRANSMISSION ") is ConsistencyCheck.NO_CHECK
    with pytest.raises(UsageError, match="transmission"):
        ConsistencyCheck.parse("md5")


def test_task_and_group_requests_share_one_validator() -> None:
    def combinations(model: type[BaseModel]) -> Any:
        return model.__pydantic_decorators__.model_validators["_combinations"].func

    assert combinations(oms.CreateTaskReq) is combinations(oms.CreateTaskGroupReq)
    for model, url_list in ((oms.CreateTaskReq, "url_list"), (oms.CreateTaskGroupReq, "URL_LIST")):
        with pytest.raises(oms.OmsError, match=f"URLSource when task_type is {url_list}"):
            oms.parse_request(model, {"task_type": url_list, "src_node": {**SRC, "list_file": {
                "list_file_key": "k", "obs_bucket": "b"}}, "dst_node": DST})
        with pytest.raises(oms.OmsError, match=r"dst_node\.kms_key_id is required"):
            oms.parse_request(model, {"src_node": SRC, "dst_node": {**DST, "crypto_type": "KMS"}})


def _string_collections(tree: ast.Module) -> list[tuple[int, frozenset[str]]]:
    """Module-level constants that are a tuple/list/set/frozenset of at least two string literals."""
    found = []
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Call) and value.args:  # frozenset((...)) / frozenset({...})
            value = value.args[0]
        if isinstance(value, ast.Tuple | ast.List | ast.Set):
            items = [e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len(items) >= 2 and len(items) == len(value.elts):
                found.append((node.lineno, frozenset(items)))
    return found


def test_no_module_above_the_vocabulary_restates_its_enums() -> None:
    """api, service, runner and cli take OMS enum values from ferry.oms (storage, db and engine sit below it)."""
    enums = [e for e in vars(oms).values() if isinstance(e, type) and issubclass(e, Enum) and e not in (
        oms.TaskStatus, oms.GroupStatus)]
    restated = []
    for path in sorted(SRC_TREE.rglob("*.py")):
        rel = path.relative_to(SRC_TREE).as_posix()
        if rel.split("/")[0] in ("oms", "storage", "db", "engine"):
            continue
        for line, values in _string_collections(ast.parse(path.read_text("utf-8"))):
            for enum in enums:
                if values <= {m.value for m in enum}:
                    restated.append(f"{rel}:{line} restates {enum.__name__}")
    assert restated == []


def test_aliases_and_forbidden_characters_are_defined_once() -> None:
    alias_modules: list[str] = []
    charsets: list[frozenset[str]] = []  # frozenset("...") character rules, such as forbidden description chars
    for path in sorted(SRC_TREE.rglob("*.py")):
        text = path.read_text("utf-8")
        if '"transmission"' in text:
            alias_modules.append(path.relative_to(SRC_TREE).as_posix())
        charsets += [frozenset(node.args[0].value) for node in ast.walk(ast.parse(text))
                     if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "frozenset"
                     and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]
    assert alias_modules == ["engine/compare.py"]
    assert len(charsets) == len(set(charsets))


def test_regions_are_read_from_the_storage_profiles() -> None:
    table = dict(oms.region_table())
    assert table[oms.CloudType.ALIYUN] == get_profile("aliyun").regions
    assert ("cn-north-4", "CN North-Beijing4") in [(r.id, r.description) for r in get_profile("huaweicloud").regions]
    # Clouds Ferry has no S3 profile for yet still advertise their regions.
    assert {oms.CloudType.AZURE, oms.CloudType.GOOGLE} <= set(table)
    assert oms.CloudType.URLSOURCE not in table
    assert [r.id for r in oms.regions(oms.CloudType.HEC)] == [r.id for r in oms.regions(oms.CloudType.HUAWEICLOUD)]


def test_a_region_added_to_a_profile_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    qiniu = get_profile("qiniu")
    with pytest.raises(UsageError, match="not a region of Qiniu"):
        endpoints.resolve_known("Qiniu", "z9", {})
    grown = qiniu.replace(regions=(*qiniu.regions, dataclasses.replace(qiniu.regions[0], id="z9")))
    monkeypatch.setattr(endpoints, "get_profile", lambda name: grown if name == "qiniu" else get_profile(name))
    assert endpoints.resolve_known("Qiniu", "z9", {}).url == "https://s3.z9.qiniucs.com"


def test_the_vocabulary_imports_no_layer_above_the_engine() -> None:
    probe = ("import sys, ferry.oms; print(sorted(m for m in sys.modules "
             "if m.startswith(('ferry.api', 'ferry.service', 'ferry.runner', 'ferry.cli'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
