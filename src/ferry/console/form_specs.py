"""The console's create forms: inputs derived from the OMS request models, posted values parsed into them, errors
placed next to the input they concern.

One rule, one place: every limit, choice and default an input shows comes from the request model's JSON schema,
and a posted form is validated by the same model the API validates into, then created by the same service
function. An input's name is the request field's dotted path (`src_node.bucket`, `bandwidth_policy[0].start`),
which is also how `ferry.oms.field_errors` names the field an error concerns.

Secrets (access keys, secret keys, tokens, connection strings, key files) are never rendered back: a form shown
again after an error has them empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from itertools import pairwise
from typing import Any, Final, Literal

from pydantic import BaseModel, ValidationError

from ferry import oms as s
from ferry.oms import Codes, FieldError, OmsError

Kind = Literal["text", "secret", "secret_area", "number", "select", "checkbox", "checkboxes", "lines", "datetime"]
GENERAL: Final = ""  # the field of an error that names none of the form's inputs: shown above the form
_INDEX: Final = re.compile(r"\[(\d+)\]")
_TRUE: Final = frozenset({"on", "true", "1", "yes"})


@dataclass(frozen=True)
class FieldSpec:
    """One input as a form lists it; what it accepts comes from the model (kind and choices may be narrowed)."""

    name: str  # dotted request path; `[]` is a row index of a repeated section
    label: str
    hint: str = ""
    kind: Kind | None = None  # None: from the schema (enum: select, boolean: checkbox, integer: number, ...)
    choices: tuple[str, ...] | None = None  # None: the schema's enum
    only_for: tuple[str, ...] = ()  # values of the form's switch (task type) that use it; () for all
    secret: bool = False  # never rendered back (schema writeOnly fields are secret anyway)
    initial: str | None = None  # what a new form shows, when not the model's default
    # Shown only while another input has one of these values (the KMS key while its encryption is KMS, the
    # Azure connection string while the cloud is Azure): a hint in the browser; the model decides what is valid.
    shown_when: tuple[str, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class Section:
    title: str
    fields: tuple[FieldSpec, ...]
    rows: int = 0  # a repeated section (bandwidth windows): its field names hold `[]`
    hint: str = ""


@dataclass(frozen=True)
class Input:
    """A FieldSpec resolved against the model: everything the template renders."""

    name: str
    label: str
    hint: str
    kind: Kind
    choices: tuple[str, ...]
    default: Any
    required: bool
    secret: bool
    only_for: tuple[str, ...]
    limits: Mapping[str, Any]
    shown_when: tuple[str, tuple[str, ...]] | None = None  # HTML attributes: maxlength, minlength, min, max, pattern


@dataclass(frozen=True)
class Row:
    index: int
    inputs: tuple[Input, ...]


@dataclass(frozen=True)
class ResolvedSection:
    title: str
    hint: str
    inputs: tuple[Input, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True, eq=False)  # hashed by identity: its resolved inputs are computed once
class FormSpec:
    key: str
    title: str
    model: type[BaseModel]
    sections: tuple[Section, ...]
    switch: str | None = None  # the input whose value decides which inputs apply (`task_type`)
    # Which inputs an OMS code that names no field is about (a bucket helper's verdict on the keys, say).
    code_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def resolved(self) -> tuple[ResolvedSection, ...]:
        return _resolve(self)

    def inputs(self) -> tuple[Input, ...]:
        return _inputs(self)


# -- the model's schema -------------------------------------------------------------------------------------------

def _deref(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    """A schema node without its $ref and Optional wrapping (the non-null branch of an anyOf)."""
    while True:
        if "$ref" in node:
            merged = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
            node = merged
            continue
        branches = [b for b in node.get("anyOf", ()) if b.get("type") != "null"]
        if len(branches) == 1:
            node = {**branches[0], **{k: v for k, v in node.items() if k != "anyOf"}}
            continue
        return node


@cache
def _schema(model: type[BaseModel]) -> Mapping[str, Any]:
    return model.model_json_schema()


def _schema_of(model: type[BaseModel], name: str) -> tuple[Mapping[str, Any], bool]:
    """The schema of a dotted field and whether the model requires it (the field and every enclosing object)."""
    schema = _schema(model)
    defs = schema.get("$defs", {})
    node: Mapping[str, Any] = schema
    required = True
    for part in _INDEX.sub("", name.replace("[]", "")).split("."):
        node = _deref(node, defs)
        if node.get("type") == "array":
            node = _deref(node["items"], defs)
        props = node.get("properties", {})
        if part not in props:
            raise KeyError(f"{model.__name__} has no field {name}")
        required = required and part in node.get("required", ())
        node = props[part]
    node = _deref(node, defs)
    if node.get("type") == "array":
        node = {**node, "items": _deref(node["items"], defs)}
    return node, required


def _kind(node: Mapping[str, Any]) -> Kind:
    if node.get("writeOnly"):
        return "secret"
    if "enum" in node:
        return "select"
    kind = node.get("type")
    if kind == "boolean":
        return "checkbox"
    if kind == "integer":
        return "number"
    if kind == "array":
        return "checkboxes" if "enum" in node.get("items", {}) else "lines"
    return "text"


def _choices(node: Mapping[str, Any]) -> tuple[str, ...]:
    if "enum" in node:
        return tuple(str(v) for v in node["enum"])
    items = node.get("items")
    if isinstance(items, Mapping) and "enum" in items:
        return tuple(str(v) for v in items["enum"])
    return ()


def _limits(node: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, attr in (("maxLength", "maxlength"), ("minLength", "minlength"), ("minimum", "min"),
                      ("maximum", "max"), ("pattern", "pattern")):
        if key in node and not (key == "maximum" and node[key] >= s.INT64_MAX):
            out[attr] = node[key]
    return out


def _input(spec: FormSpec, f: FieldSpec, name: str) -> Input:
    node, required = _schema_of(spec.model, name)
    kind = f.kind or _kind(node)
    if node.get("writeOnly") and kind == "text":
        kind = "secret"
    default = node.get("default") if f.initial is None else f.initial
    if kind == "checkboxes" and default is None:
        default = []
    secret = f.secret or bool(node.get("writeOnly"))
    items = node.get("items") if kind == "lines" else None
    limits = _limits(items if isinstance(items, Mapping) else node)
    if kind == "lines" and "maxItems" in node:
        limits["data-max-lines"] = node["maxItems"]
    choices = f.choices or _choices(node)
    if kind == "select" and default is None and "" not in choices:
        choices = ("", *choices)  # an optional choice: empty sends nothing
    return Input(name=name, label=f.label, hint=f.hint, kind=kind, choices=choices,
                 default=default, required=required, secret=secret, only_for=f.only_for, limits=limits,
                 shown_when=f.shown_when)


@cache
def _inputs(spec: FormSpec) -> tuple[Input, ...]:
    out: list[Input] = []
    for section in spec.resolved():
        out.extend(section.inputs)
        for row in section.rows:
            out.extend(row.inputs)
    return tuple(out)


@cache
def _resolve(spec: FormSpec) -> tuple[ResolvedSection, ...]:
    out = []
    for section in spec.sections:
        if section.rows:
            rows = tuple(Row(i, tuple(_input(spec, f, f.name.replace("[]", f"[{i}]")) for f in section.fields))
                         for i in range(section.rows))
            out.append(ResolvedSection(section.title, section.hint, (), rows))
        else:
            out.append(ResolvedSection(section.title, section.hint,
                                       tuple(_input(spec, f, f.name) for f in section.fields), ()))
    return tuple(out)


# -- posted values -> the request -------------------------------------------------------------------------------

FormValues = Mapping[str, Sequence[str]]


def _epoch_seconds(text: str) -> int | str:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return text  # the model says what is wrong with it
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def _value(inp: Input, raw: Sequence[str]) -> Any:
    """The request value of one input, or None when it was left empty (the field is then not sent)."""
    if inp.kind == "checkbox":
        return any(v.strip().lower() in _TRUE for v in raw)
    if inp.kind == "checkboxes":
        return [v for v in raw if v] or None
    text = raw[-1] if raw else ""
    if inp.kind == "lines":
        lines = [line.rstrip("\r") for line in text.split("\n")]
        return [line for line in lines if line.strip()] or None
    if inp.kind in ("secret", "secret_area"):
        return text or None  # not stripped: a secret is what was typed
    text = text.strip()
    if not text:
        return None
    if inp.kind == "number":
        return int(text) if re.fullmatch(r"-?\d+", text) else text
    if inp.kind == "datetime":
        return _epoch_seconds(text)
    return text


def _path(name: str) -> list[str | int]:
    parts: list[str | int] = []
    for part in name.split("."):
        head, *indexes = _INDEX.split(part)
        parts.append(head)
        parts.extend(int(i) for i in indexes if i)
    return parts


def _put(tree: dict[str, Any], path: list[str | int], value: Any) -> None:
    node: Any = tree
    for here, after in pairwise(path):
        empty: Any = [] if isinstance(after, int) else {}
        if isinstance(here, int):
            while len(node) <= here:
                node.append(None)
            if node[here] is None:
                node[here] = empty
            node = node[here]
        else:
            node = node.setdefault(here, empty)
    last = path[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append(None)
        node[last] = value
    else:
        node[last] = value


def _prune(value: Any) -> Any:
    """Drop what was left empty: a section none of whose inputs was filled is not sent at all."""
    if isinstance(value, dict):
        kept = {k: _prune(v) for k, v in value.items()}
        kept = {k: v for k, v in kept.items() if v is not None}
        return kept or None
    if isinstance(value, list) and value and all(isinstance(v, dict | None) for v in value):
        rows = [r for r in (_prune(v) for v in value) if r is not None]
        return rows or None
    return value


def applies(inp: Input, switch_value: str | None) -> bool:
    return not inp.only_for or (switch_value is not None and switch_value.lower() in
                                {v.lower() for v in inp.only_for})


def request_data(spec: FormSpec, form: FormValues) -> dict[str, Any]:
    """The request body a posted form stands for: empty inputs left out, inputs of other task types ignored."""
    switch_value = (form.get(spec.switch) or [""])[-1] if spec.switch else None
    tree: dict[str, Any] = {}
    for inp in spec.inputs():
        if not applies(inp, switch_value):
            continue
        value = _value(inp, form.get(inp.name, ()))
        if value is not None:
            _put(tree, _path(inp.name), value)
    # Booleans are always sent (an unchecked box is False); every other empty input, and so an empty section,
    # is left out for the model's default.
    return {k: v for k, v in ((k, _prune(v)) for k, v in tree.items()) if v is not None}


def echo(spec: FormSpec, form: FormValues) -> dict[str, Any]:
    """The values to show again after an error: what was posted, secrets excepted."""
    out: dict[str, Any] = {}
    for inp in spec.inputs():
        if inp.secret:
            continue
        raw = form.get(inp.name, ())
        if inp.kind == "checkbox":
            out[inp.name] = any(v.strip().lower() in _TRUE for v in raw)
        elif inp.kind == "checkboxes":
            out[inp.name] = list(raw)
        else:
            out[inp.name] = raw[-1] if raw else ""
    return out


def initial(spec: FormSpec) -> dict[str, Any]:
    """The values of a new form: the model's defaults."""
    out: dict[str, Any] = {}
    for inp in spec.inputs():
        if inp.secret:
            continue
        default = inp.default
        out[inp.name] = default if inp.kind in ("checkbox", "checkboxes") else ("" if default is None else
                                                                               str(default))
    return out


# -- errors next to their inputs ----------------------------------------------------------------------------------

Errors = dict[str, list[FieldError]]


def _place(names: Sequence[str], error: FieldError) -> str:
    """The input an error is shown next to: the field it names, or the first input inside it (`src_node.list_file`
    is its key's input), else GENERAL."""
    if error.field in names:
        return error.field
    inside = [n for n in names if n.startswith(error.field + ".") or n.startswith(error.field + "[")]
    return inside[0] if inside else GENERAL


def validation_errors(spec: FormSpec, errors: Iterable[FieldError]) -> Errors:
    names = [i.name for i in spec.inputs()]
    out: Errors = {}
    for error in errors:
        out.setdefault(_place(names, error), []).append(error)
    return out


def refusal_errors(spec: FormSpec, refused: OmsError) -> Errors:
    """A service's refusal, next to the inputs it is about: those its code is documented for, else the inputs its
    message names (`dst_node.bucket: ...`), else above the form."""
    names = [i.name for i in spec.inputs()]
    targets = [n for n in spec.code_fields.get(refused.error_code, ()) if n in names]
    if not targets:
        named = [n for n in names if re.search(rf"(?<![\w.]){re.escape(n)}(?![\w\[])", refused.error_msg)]
        # The most specific names only: `src_node.list_file.obs_bucket` rather than a shorter one inside it.
        targets = [n for n in named if not any(o != n and o.startswith(n) for o in named)][:2]
    return {target: [FieldError(target, refused.error_code, refused.error_msg)] for target in targets or [GENERAL]}


@dataclass(frozen=True)
class Outcome:
    """A posted form's result: the created resource's id, or the errors and the values to show again."""

    created: str | None
    errors: Errors
    values: dict[str, Any]


def parse(spec: FormSpec, form: FormValues) -> BaseModel | Outcome:
    """The request a posted form stands for, validated by the model the API validates into; or, when invalid,
    the errors next to their inputs and the values to show again."""
    try:
        return spec.model.model_validate(request_data(spec, form))
    except ValidationError as exc:
        return Outcome(None, validation_errors(spec, s.field_errors(exc.errors(include_input=False))),
                       echo(spec, form))


def refused(spec: FormSpec, form: FormValues, refusal: OmsError) -> Outcome:
    """The form shown again with a service's refusal (as `ferry.oms.refusal` maps it) next to its inputs."""
    return Outcome(None, refusal_errors(spec, refusal), echo(spec, form))


def submit(spec: FormSpec, form: FormValues, create: Callable[[Any], str]) -> Outcome:
    """Validate the posted form and, when valid, create with the service call `create` (which raises OmsError
    for a refusal)."""
    parsed = parse(spec, form)
    if isinstance(parsed, Outcome):
        return parsed
    try:
        return Outcome(create(parsed), {}, {})
    except OmsError as exc:
        return refused(spec, form, exc)


# -- the three forms ---------------------------------------------------------------------------------------------

_BUCKET_TYPES: Final = tuple(t.value for t in (s.TaskType.OBJECT, s.TaskType.PREFIX, s.TaskType.LIST))
_LISTED: Final = tuple(t.value for t in (s.TaskType.LIST, s.TaskType.URL_LIST))
_KEYS_HINT: Final = "Never shown again once submitted."
_KMS_HINT: Final = "36 characters; required when the encryption is KMS."


def _when(name: str, *values: str) -> tuple[str, tuple[str, ...]]:
    return name, values


def _src_keys(prefix: str, only_for: tuple[str, ...], *, token: bool) -> tuple[FieldSpec, ...]:
    cloud = _when(f"{prefix}cloud_type", "Azure"), _when(f"{prefix}cloud_type", "Google")
    fields = [
        FieldSpec(f"{prefix}ak", "Source access key (AK)", _KEYS_HINT, kind="secret", only_for=only_for, secret=True),
        FieldSpec(f"{prefix}sk", "Source secret key (SK)", _KEYS_HINT, only_for=only_for),
    ]
    if token:
        fields.append(FieldSpec(f"{prefix}security_token", "Source security token", "Temporary credentials only.",
                                only_for=only_for))
    fields += [
        FieldSpec(f"{prefix}connection_string", "Azure connection string", "Azure sources: instead of AK/SK.",
                  only_for=only_for, shown_when=cloud[0]),
        FieldSpec(f"{prefix}json_auth_file", "Google service-account key (JSON)", "Google sources only.",
                  kind="secret_area", only_for=only_for, shown_when=cloud[1]),
    ]
    return tuple(fields)


def _migration_sections(*, group: bool) -> tuple[Section, ...]:
    bucket_types = ("PREFIX", "LIST") if group else _BUCKET_TYPES
    listed = ("LIST", "URL_LIST") if group else _LISTED
    clouds = tuple(c.value for c in s.SOURCE_CLOUDS)
    task = [FieldSpec("task_type", "Task type",
                      "prefix: the objects under prefixes; list: the keys of a list file; url_list: the URLs of a "
                      "list file" + ("" if group else "; object: named objects"))]
    task.append(FieldSpec("description", "Description", "At most 255 characters, none of ^<>&\"'."))
    if not group:
        task.append(FieldSpec("task_priority", "Priority"))
    source = (
        FieldSpec("src_node.cloud_type", "Source cloud", choices=clouds, only_for=bucket_types),
        FieldSpec("src_node.region", "Source region", "The region ID, e.g. cn-hangzhou.", only_for=bucket_types),
        FieldSpec("src_node.bucket", "Source bucket", only_for=bucket_types),
        FieldSpec("src_node.app_id", "APPID", "Tencent COS only.", only_for=bucket_types,
                  shown_when=_when("src_node.cloud_type", "Tencent")),
        *_src_keys("src_node.", bucket_types, token=not group),
        FieldSpec("src_node.object_key", "Prefixes" if group else "Object keys or prefixes",
                  "One prefix per line, at most 500 (empty: the whole bucket)." if group else
                  "One per line, at most 500. object: the keys; prefix: the prefixes (empty: the whole bucket).",
                  only_for=("PREFIX",) if group else ("object", "prefix")),
        FieldSpec("src_node.list_file.list_file_key", "List file key", "A .txt object of at most 100 MB.",
                  only_for=listed),
        FieldSpec("src_node.list_file.obs_bucket", "Bucket holding the list file", only_for=listed),
        FieldSpec("src_node.list_file.list_file_num", "Number of list files", only_for=listed),
        FieldSpec("src_node.crypto_type", "Source encryption", only_for=bucket_types),
        FieldSpec("src_node.kms_key_id", "Source KMS key ID", _KMS_HINT, only_for=bucket_types,
                  shown_when=_when("src_node.crypto_type", "KMS")),
    )
    dst: list[FieldSpec] = []
    if group:
        dst.append(FieldSpec("dst_node.cloud_type", "Destination cloud",
                             choices=(s.CloudType.HEC.value, *(c.value for c in s.DESTINATION_CLOUDS))))
    dst += [
        FieldSpec("dst_node.region", "Destination region", "The region ID, e.g. cn-north-4."),
        FieldSpec("dst_node.bucket", "Destination bucket"),
        FieldSpec("dst_node.save_prefix", "Destination prefix", "A folder: 'all' writes all/<key>."),
        FieldSpec("dst_node.ak", "Destination access key (AK)", _KEYS_HINT, kind="secret", secret=True),
        FieldSpec("dst_node.sk", "Destination secret key (SK)", _KEYS_HINT),
    ]
    if not group:
        dst.append(FieldSpec("dst_node.security_token", "Destination security token", "Temporary credentials only."))
    dst += [FieldSpec("dst_node.crypto_type", "Destination encryption"),
            FieldSpec("dst_node.kms_key_id", "Destination KMS key ID", _KMS_HINT,
                      shown_when=_when("dst_node.crypto_type", "KMS"))]
    options = (
        FieldSpec("object_overwrite_mode", "When the destination has the object"),
        FieldSpec("consistency_check", "Consistency check"),
        FieldSpec("dst_storage_policy", "Destination storage class"),
        FieldSpec("migrate_since", "Only objects modified since", "UTC; empty: all objects.", kind="datetime"),
        FieldSpec("enable_metadata_migration", "Migrate metadata"),
        FieldSpec("enable_restore", "Restore archived objects"),
        FieldSpec("enable_failed_object_recording", "Record failed objects"),
        FieldSpec("enable_requester_pays", "Requester pays"),
        FieldSpec("ferry_reread_size_only", "Re-read objects checked by size only",
                  "Objects whose source gives no checksum are read again from both stores and compared."),
    )
    cdn = (
        FieldSpec("source_cdn.domain", "CDN domain", "Read the source through this CDN; empty: no CDN."),
        FieldSpec("source_cdn.protocol", "CDN protocol", choices=("", "http", "https")),
        FieldSpec("source_cdn.authentication_type", "CDN authentication", choices=("", *(
            t.value for t in s.CdnAuthType))),
        FieldSpec("source_cdn.authentication_key", "CDN authentication key", _KEYS_HINT),
        FieldSpec("source_cdn.crypto_type", "CDN key encryption", choices=("", "DEFAULT", "KMS"), initial=""),
        FieldSpec("source_cdn.kms_key_id", "CDN KMS key ID", _KMS_HINT,
                  shown_when=_when("source_cdn.crypto_type", "KMS")),
    )
    smn = (
        FieldSpec("smn_config.topic_urn", "SMN topic URN", "Empty: no notifications."),
        FieldSpec("smn_config.trigger_conditions", "Notify on"),
        FieldSpec("smn_config.language", "Language", choices=("", "zh-cn", "en-us")),
        FieldSpec("smn_config.message_template_name", "Message template"),
    )
    bandwidth = (
        FieldSpec("bandwidth_policy[].start", "From (hh:mm)", kind="text"),
        FieldSpec("bandwidth_policy[].end", "To (hh:mm)", kind="text"),
        FieldSpec("bandwidth_policy[].max_bandwidth", "Bytes per second",
                  f"{s.MIN_BANDWIDTH} to {s.MAX_BANDWIDTH} (1 to 200 MiB/s)."),
    )
    return (
        Section("Task", tuple(task)),
        Section("Source", source, hint="url_list tasks read the URLs of their list file: no source bucket."),
        Section("Destination", tuple(dst)),
        Section("Options", options),
        Section("Bandwidth limits", bandwidth, rows=s.MAX_BANDWIDTH_WINDOWS,
                hint="Up to five daily windows (UTC), not overlapping; empty rows are ignored."),
        Section("Source CDN", cdn),
        Section("Notifications (SMN)", smn),
    )


def _code_fields(src: str, dst: str, *, list_file: str = "src_node.list_file.list_file_key",
                 cdn: str = "source_cdn.authentication_key") -> dict[str, tuple[str, ...]]:
    """The inputs each OMS code that names no field is about (ferry.oms.Codes documents each)."""
    return {
        Codes.SRC_AUTH: (f"{src}ak", f"{src}sk"), Codes.SRC_DENIED: (f"{src}ak", f"{src}sk"),
        Codes.SRC_BUCKET: (f"{src}bucket",),
        Codes.DST_AUTH: (f"{dst}ak", f"{dst}sk"), Codes.DST_DENIED: (f"{dst}ak", f"{dst}sk"),
        Codes.DST_BUCKET: (f"{dst}bucket",), Codes.REGION_UNSUPPORTED: (f"{dst}region",),
        Codes.LIST_MISSING: (list_file,), Codes.LIST_TOO_BIG: (list_file,), Codes.LIST_FORMAT: (list_file,),
        Codes.LIST_EMPTY: (list_file,), Codes.LIST_LINE_TOO_LONG: (list_file,),
        Codes.LIST_CONTENT_TYPE: (list_file,),
        Codes.CDN_KEY: (cdn,), Codes.SMN_TOPIC: ("smn_config.topic_urn",),
        Codes.DESCRIPTION_CHARS: ("description",),
    }


TASK_FORM: Final = FormSpec(
    key="task", title="New migration task", model=s.CreateTaskReq, sections=_migration_sections(group=False),
    switch="task_type", code_fields=_code_fields("src_node.", "dst_node."),
)
GROUP_FORM: Final = FormSpec(
    key="group", title="New task group", model=s.CreateTaskGroupReq, sections=_migration_sections(group=True),
    switch="task_type", code_fields=_code_fields("src_node.", "dst_node."),
)
SYNC_FORM: Final = FormSpec(
    key="sync", title="New sync task", model=s.CreateSyncTaskReq,
    sections=(
        Section("Task", (FieldSpec("description", "Description", "At most 255 characters, none of <>()\"'&."),)),
        Section("Source", (
            FieldSpec("src_cloud_type", "Source cloud", choices=tuple(c.value for c in s.DESTINATION_CLOUDS)),
            FieldSpec("src_region", "Source region", "The region ID, e.g. cn-hangzhou."),
            FieldSpec("src_bucket", "Source bucket"),
            FieldSpec("app_id", "APPID", "Tencent COS only.", shown_when=_when("src_cloud_type", "Tencent")),
            FieldSpec("src_ak", "Source access key (AK)", _KEYS_HINT, kind="secret", secret=True),
            FieldSpec("src_sk", "Source secret key (SK)", _KEYS_HINT),
            FieldSpec("src_crypto_type", "Source encryption"),
            FieldSpec("src_kms_key_id", "Source KMS key ID", _KMS_HINT, shown_when=_when("src_crypto_type", "KMS")),
        )),
        Section("Destination", (
            FieldSpec("dst_region", "Destination region", "The region ID, e.g. cn-north-4."),
            FieldSpec("dst_bucket", "Destination bucket"),
            FieldSpec("dst_ak", "Destination access key (AK)", _KEYS_HINT, kind="secret", secret=True),
            FieldSpec("dst_sk", "Destination secret key (SK)", _KEYS_HINT),
            FieldSpec("dst_crypto_type", "Destination encryption"),
            FieldSpec("dst_kms_key_id", "Destination KMS key ID", _KMS_HINT,
                      shown_when=_when("dst_crypto_type", "KMS")),
        )),
        Section("Options", (
            FieldSpec("consistency_check", "Consistency check"),
            FieldSpec("dst_storage_policy", "Destination storage class"),
            FieldSpec("enable_metadata_migration", "Migrate metadata"),
            FieldSpec("enable_restore", "Restore archived objects"),
        )),
        Section("Source CDN", (
            FieldSpec("source_cdn.domain", "CDN domain", "Read the source through this CDN; empty: no CDN."),
            FieldSpec("source_cdn.protocol", "CDN protocol", choices=("", "http", "https")),
            FieldSpec("source_cdn.authentication_type", "CDN authentication",
                      choices=("", *(t.value for t in s.CdnAuthType))),
            FieldSpec("source_cdn.authentication_key", "CDN authentication key", _KEYS_HINT),
            FieldSpec("source_cdn.crypto_type", "CDN key encryption", choices=("", "DEFAULT", "KMS"), initial=""),
            FieldSpec("source_cdn.kms_key_id", "CDN KMS key ID", _KMS_HINT,
                      shown_when=_when("source_cdn.crypto_type", "KMS")),
        )),
    ),
    code_fields=_code_fields("src_", "dst_", list_file="src_bucket"),
)
START_SYNC_FORM: Final = FormSpec(
    key="sync-start", title="Start the sync task", model=s.StartSyncTaskReq,
    sections=(Section("Keys", (
        FieldSpec("src_ak", "Source access key (AK)", _KEYS_HINT, kind="secret", secret=True),
        FieldSpec("src_sk", "Source secret key (SK)", _KEYS_HINT),
        FieldSpec("dst_ak", "Destination access key (AK)", _KEYS_HINT, kind="secret", secret=True),
        FieldSpec("dst_sk", "Destination secret key (SK)", _KEYS_HINT),
        FieldSpec("source_cdn_authentication_key", "CDN authentication key", "Only for a CDN that signs URLs."),
        FieldSpec("dst_crypto_type", "Destination encryption"),
        FieldSpec("dst_kms_key_id", "Destination KMS key ID", "The task's own key, when it writes with KMS.",
                  shown_when=_when("dst_crypto_type", "KMS")),
    ), hint="A stopped task starts again with its keys re-supplied; they are checked as at creation."),),
    code_fields=_code_fields("src_", "dst_", list_file="src_bucket"),
)
FORMS: Final = {f.key: f for f in (TASK_FORM, GROUP_FORM, SYNC_FORM, START_SYNC_FORM)}
