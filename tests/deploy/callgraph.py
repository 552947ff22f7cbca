"""Which AWS operations a runtime can call: a static analysis of the package source (AST, no imports).

The question the IAM tests ask is "does this role grant what the code calls, and no more?". This module
answers the first half from the source:

1. **Index** every module of the given packages: functions, classes (bases, methods, the types of their
   attributes from annotations and ``self.x = K(...)``), imports (also the lazy ones inside functions).
2. **AWS operations** are found where they are *referenced*, called or not: ``client.put_records(...)``,
   ``partial(self.client.get_records, ...)``, ``client.get_paginator("list_objects_v2")``,
   ``client.get_waiter("table_exists")``, and dispatchers such as ``getattr(self.client, method)`` whose
   callers pass the operation's name (``self._call("put_item", ...)``). A receiver is a client when its
   name says so (``client``, ``self._client``, ``kinesis_client``), or it was assigned from a
   ``….client("svc")`` call. The service is the one whose botocore model has the operation; when several
   have it, the module's hints decide (``client("sqs")`` literals, ``mypy_boto3_sqs`` imports).
3. **Reachability** from a runtime's entry points, by rapid type analysis: a function is reachable when a
   reachable function refers to it; a method call ``x.m()`` goes to ``m`` of the classes ``x`` can be
   (its annotation or constructor; a Protocol means every implementation) - and of those only the
   classes that reachable code instantiates. When ``x``'s type is unknown, every instantiated class's
   ``m`` is a candidate, except for names that are methods of builtin containers (``get``, ``update``…),
   which would otherwise tie every ``dict.get`` to a store's ``get``.

The result over-approximates (a reachable reference need not run), never under-approximates for code
written in the package's typed style; the tests pin both directions on small synthetic sources.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import botocore.session
from botocore import xform_name

__all__ = [
    "SERVICES",
    "AnalysisError",
    "CodeIndex",
    "Op",
    "Reach",
    "iam_actions",
]

REPO = Path(__file__).resolve().parents[2]

#: Services whose operations are looked for (botocore names).
SERVICES = (
    "kinesis",
    "dynamodb",
    "sqs",
    "s3",
    "sns",
    "stepfunctions",
    "cloudwatch",
    "logs",
    "kms",
    "sts",
    "firehose",
)
#: IAM service prefixes that differ from the botocore service name.
IAM_PREFIX = {"stepfunctions": "states"}
#: Operations whose IAM action is not ``<prefix>:<OperationName>``.
IAM_ACTION = {
    ("s3", "ListObjects"): ("s3:ListBucket",),
    ("s3", "ListObjectsV2"): ("s3:ListBucket",),
    ("s3", "HeadObject"): ("s3:GetObject",),
    ("s3", "HeadBucket"): ("s3:ListBucket",),
    ("s3", "DeleteObjects"): ("s3:DeleteObject",),
    ("s3", "CreateMultipartUpload"): ("s3:PutObject",),
    ("s3", "UploadPart"): ("s3:PutObject",),
    ("s3", "CompleteMultipartUpload"): ("s3:PutObject",),
    ("s3", "CopyObject"): ("s3:GetObject", "s3:PutObject"),
    ("sqs", "SendMessageBatch"): ("sqs:SendMessage",),
    ("sqs", "DeleteMessageBatch"): ("sqs:DeleteMessage",),
    ("sqs", "ChangeMessageVisibilityBatch"): ("sqs:ChangeMessageVisibility",),
    ("sqs", "GetQueueUrl"): ("sqs:GetQueueUrl",),
    ("sns", "PublishBatch"): ("sns:Publish",),
}
#: boto3's injected S3 transfer methods -> the operations they use.
S3_TRANSFER = {
    "upload_file": (
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    ),
    "upload_fileobj": (
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    ),
    "download_file": ("HeadObject", "GetObject"),
    "download_fileobj": ("HeadObject", "GetObject"),
    "copy": (
        "HeadObject",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPartCopy",
        "CompleteMultipartUpload",
    ),
}
#: Methods of builtin types: an unknown receiver calling one of these is not dispatched by name.
BUILTIN_METHODS = frozenset(
    name
    for t in (dict, list, set, frozenset, str, bytes, bytearray, tuple, int, float)
    for name in dir(t)
    if not name.startswith("_")
)
#: The type of a value that no package method can belong to (``Path``, ``str``, a boto3 client).
OPAQUE = "<opaque>"
#: Bases that call nothing back (unlike a framework's base class, whose methods it calls).
_PLAIN_BASES = frozenset(
    {
        "object",
        "Generic",
        "Protocol",
        "Exception",
        "BaseException",
        "ValueError",
        "RuntimeError",
        "KeyError",
        "TypeError",
        "OSError",
        "StrEnum",
        "Enum",
        "IntEnum",
        "NamedTuple",
        "TypedDict",
        "ABC",
        "dict",
        "list",
        "tuple",
        "str",
        "int",
        "float",
    }
)
_CLIENT_NAME = re.compile(r"(^|_)clients?$|^client|_client_|client$")


class AnalysisError(Exception):
    """The analysis met code it cannot attribute (say which line, and why)."""


@dataclass(frozen=True, order=True)
class Op:
    """One AWS operation (botocore names) and where it is referenced."""

    service: str
    operation: str
    where: str = field(default="", compare=False)


@functools.cache
def _models() -> dict[str, dict[str, str]]:
    """service -> {snake_case operation: OperationName}."""
    session = botocore.session.get_session()
    out: dict[str, dict[str, str]] = {}
    for service in SERVICES:
        names = session.get_service_model(service).operation_names
        out[service] = {xform_name(n): n for n in names}
    return out


@functools.cache
def _waiters(service: str) -> dict[str, str]:
    """snake_case waiter name -> the OperationName it polls."""
    session = botocore.session.get_session()
    try:
        model = session.get_waiter_model(service)
    except Exception:
        return {}
    return {xform_name(n): model.get_waiter(n).operation for n in model.waiter_names}


def iam_actions(ops: Iterable[Op]) -> set[str]:
    """The IAM actions the operations need."""
    out: set[str] = set()
    for op in ops:
        out.update(
            IAM_ACTION.get(
                (op.service, op.operation), (f"{IAM_PREFIX.get(op.service, op.service)}:{op.operation}",)
            )
        )
    return out


# --- the index --------------------------------------------------------------------------------


@dataclass
class ClassInfo:
    key: str
    module: str
    name: str
    node: ast.ClassDef
    methods: dict[str, str] = field(default_factory=dict)
    bases: list[str] = field(default_factory=list)  # resolved class keys
    base_exprs: list[ast.expr] = field(default_factory=list)
    protocol: bool = False
    #: a base outside the indexed packages (a framework may call any of its methods)
    external_base: bool = False
    #: attribute -> class keys it may hold (annotations, ``self.x = K(...)``)
    attr_types: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class FunctionInfo:
    key: str
    module: str
    cls: str | None
    node: ast.AST
    params: list[str] = field(default_factory=list)


@dataclass
class ModuleInfo:
    name: str
    path: Path
    tree: ast.Module
    functions: dict[str, str] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (module, symbol)
    hints: set[str] = field(default_factory=set)
    client_names: set[str] = field(default_factory=set)


class CodeIndex:
    """Every module under ``roots`` (``{package name: directory}``)."""

    def __init__(self, roots: Mapping[str, Path], base: Path | None = None) -> None:
        #: sites are shown relative to this directory
        self.base = base or Path(next(iter(roots.values()))).parent
        self.modules: dict[str, ModuleInfo] = {}
        self.functions: dict[str, FunctionInfo] = {}
        self.classes: dict[str, ClassInfo] = {}
        for package, directory in roots.items():
            for path in sorted(directory.rglob("*.py")):
                rel = path.relative_to(directory).with_suffix("")
                parts = [package, *rel.parts]
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                self._add_module(".".join(parts), path)
        for cls in self.classes.values():
            cls.bases = [k for e in cls.base_exprs for k in self._class_keys(cls.module, e)]
            cls.protocol = any(_name_of(e) == "Protocol" for e in cls.base_exprs)
            cls.external_base = (
                len(cls.bases) < len(cls.base_exprs)
                and not cls.protocol
                and not any(_name_of(e) in _PLAIN_BASES for e in cls.base_exprs)
            )
        for cls in self.classes.values():
            cls.attr_types = self._attribute_types(cls)
        self.dispatchers = self._dispatchers()

    @classmethod
    def of_repo(cls) -> CodeIndex:
        return cls(
            {
                "qldbstream": REPO / "qldbstream",
                "qldbstream_handlers": REPO / "handlers" / "qldbstream_handlers",
            },
            REPO,
        )

    # -- building -------------------------------------------------------------------------------
    def _add_module(self, name: str, path: Path) -> None:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        mod = ModuleInfo(name, path, tree)
        self.modules[name] = mod
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        mod.aliases[a.asname] = (a.name, None)
                    else:
                        mod.aliases[a.name.split(".")[0]] = (a.name.split(".")[0], None)
                    if a.name.startswith("mypy_boto3_"):
                        mod.hints.add(a.name[len("mypy_boto3_") :].split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node.module, node.level)
                if base.startswith("mypy_boto3_"):
                    mod.hints.add(base[len("mypy_boto3_") :].split(".")[0])
                for a in node.names:
                    mod.aliases[a.asname or a.name] = (base, a.name)
            elif isinstance(node, ast.Call):
                service = _client_call_service(node)
                if service:
                    mod.hints.add(service)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                value = node.value
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if value is not None and _is_client_call(value):
                    for t in targets:
                        n = _terminal(t)
                        if n:
                            mod.client_names.add(n)
        mkey = f"{name}:<module>"
        self.functions[mkey] = FunctionInfo(mkey, name, None, tree)
        for node in tree.body:
            self._add_def(mod, node, None)

    def _add_def(self, mod: ModuleInfo, node: ast.stmt, cls: ClassInfo | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            qual = f"{cls.name}.{node.name}" if cls else node.name
            key = f"{mod.name}:{qual}"
            params = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
            self.functions[key] = FunctionInfo(key, mod.name, cls.key if cls else None, node, params)
            if cls:
                cls.methods[node.name] = key
            else:
                mod.functions[node.name] = key
        elif isinstance(node, ast.ClassDef) and cls is None:
            key = f"{mod.name}:{node.name}"
            info = ClassInfo(key, mod.name, node.name, node, base_exprs=list(node.bases))
            self.classes[key] = info
            mod.classes[node.name] = key
            body_key = f"{key}.<class>"
            self.functions[body_key] = FunctionInfo(body_key, mod.name, key, node)
            for child in node.body:
                self._add_def(mod, child, info)
        elif isinstance(node, ast.If | ast.Try):  # defs under `if TYPE_CHECKING:` / `try: import`
            for child in [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]:
                self._add_def(mod, child, cls)

    def symbol(self, module: str, name: str, depth: int = 0) -> str | None:
        """The function or class key ``name`` is in ``module`` (following imports and re-exports)."""
        mod = self.modules.get(module)
        if mod is None or depth > 8:
            return None
        if name in mod.functions:
            return mod.functions[name]
        if name in mod.classes:
            return mod.classes[name]
        if name in mod.aliases:
            target, sym = mod.aliases[name]
            if sym is None:
                return None
            if f"{target}.{sym}" in self.modules:
                return None  # a module, not a symbol
            return self.symbol(target, sym, depth + 1)
        return None

    def module_alias(self, module: str, name: str) -> str | None:
        mod = self.modules[module]
        if name not in mod.aliases:
            return None
        target, sym = mod.aliases[name]
        full = target if sym is None else f"{target}.{sym}"
        return full if full in self.modules else None

    def _class_keys(self, module: str, expr: ast.expr | None) -> list[str]:
        """Package classes an annotation or base expression names (``A | None``, ``Sequence[A]``...)."""
        if expr is None:
            return []
        out: list[str] = []
        for node in ast.walk(expr):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                try:
                    out.extend(self._class_keys(module, ast.parse(node.value, mode="eval").body))
                except SyntaxError:
                    continue
            elif isinstance(node, ast.Name):
                key = self.symbol(module, node.id)
                if key in self.classes:
                    out.append(key)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                target = self.module_alias(module, node.value.id)
                key = self.symbol(target, node.attr) if target else None
                if key in self.classes:
                    out.append(key)
        return out

    def _types(self, module: str, annotation: ast.expr | None) -> list[str]:
        """The package classes an annotation names; ``[OPAQUE]`` for a type of another package (``Path``,
        ``KinesisClient``: no package method can be its), ``[]`` when absent or ``Any``/``object``."""
        if annotation is None:
            return []
        keys = self._class_keys(module, annotation)
        if keys:
            return keys
        text = ast.unparse(annotation)
        if re.search(r"\b(Any|object)\b", text):
            return []
        return [OPAQUE]

    def _constructed(self, module: str, value: ast.expr | None) -> list[str]:
        """The class of ``K(...)``: a package class, or ``OPAQUE`` for another capitalised callable."""
        if not isinstance(value, ast.Call):
            return []
        keys = [k for k in self._class_keys(module, value.func) if k in self.classes]
        if keys:
            return keys
        name = _terminal(value.func)
        return [OPAQUE] if name[:1].isupper() else []

    def _attribute_types(self, cls: ClassInfo) -> dict[str, set[str]]:
        types: dict[str, set[str]] = {}
        for node in cls.node.body:  # dataclass fields / class-level annotations
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                types.setdefault(node.target.id, set()).update(self._types(cls.module, node.annotation))
        for node in ast.walk(cls.node):
            target: ast.expr | None = None
            value: ast.expr | None = None
            annotation: ast.expr | None = None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign):
                target, value, annotation = node.target, node.value, node.annotation
            if not (isinstance(target, ast.Attribute) and _name_of(target.value) == "self"):
                continue
            keys = types.setdefault(target.attr, set())
            keys.update(self._types(cls.module, annotation))
            keys.update(self._constructed(cls.module, value))
        return types

    def _dispatchers(self) -> dict[str, int]:
        """Functions that call ``getattr(<client>, <parameter>)``: name -> the parameter's position."""
        out: dict[str, int] = {}
        for fn in self.functions.values():
            if not isinstance(fn.node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn.node):
                if (
                    isinstance(node, ast.Call)
                    and _name_of(node.func) == "getattr"
                    and len(node.args) >= 2
                    and self._is_client(fn.module, node.args[0])
                    and isinstance(node.args[1], ast.Name)
                    and node.args[1].id in fn.params
                ):
                    position = fn.params.index(node.args[1].id) - (1 if fn.cls else 0)
                    out[fn.node.name] = position
        return out

    def _is_client(self, module: str, expr: ast.expr, typed: frozenset[str] = frozenset()) -> bool:
        """Whether ``expr`` is a boto3 client: by its name, its origin or its ``mypy_boto3`` annotation."""
        if isinstance(expr, ast.Call):
            return _is_client_call(expr)
        if isinstance(expr, ast.Name) and expr.id in typed:
            return True
        name = _terminal(expr)
        return bool(name) and (bool(_CLIENT_NAME.search(name)) or name in self.modules[module].client_names)

    def _client_typed(self, fn: FunctionInfo) -> frozenset[str]:
        """Parameters and locals of ``fn`` annotated with a ``mypy_boto3_<service>`` client type."""
        out: set[str] = set()
        node = fn.node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return frozenset()
        pairs = [
            (a.arg, a.annotation) for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)
        ]
        pairs += [
            (sub.target.id, sub.annotation)
            for sub in ast.walk(node)
            if isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name)
        ]
        aliases = self.modules[fn.module].aliases
        for name, annotation in pairs:
            for sub in ast.walk(annotation) if annotation is not None else ():
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sub.value)
                elif isinstance(sub, ast.Name):
                    words = [sub.id]
                else:
                    continue
                if any(
                    w.endswith("Client") and aliases.get(w, ("",))[0].startswith("mypy_boto3_") for w in words
                ):
                    out.add(name)
        return frozenset(out)

    # -- one function's references ----------------------------------------------------------------
    @functools.cache  # noqa: B019 - the index lives as long as the test session
    def scan(self, key: str) -> Scan:
        fn = self.functions[key]
        scan = Scan()
        body: list[ast.AST]
        if key.endswith(":<module>"):
            body = [
                n
                for n in fn.node.body
                if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            ]  # type: ignore[attr-defined]
            for n in fn.node.body:  # type: ignore[attr-defined]
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.decorator_list:
                    scan.calls.add(self.functions[f"{fn.module}:{n.name}"].key)
        elif key.endswith(".<class>"):
            body = [n for n in fn.node.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]  # type: ignore[attr-defined]
            cls = self.classes[fn.cls or ""]
            for n in fn.node.body:  # type: ignore[attr-defined]
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.decorator_list:
                    body.extend(n.decorator_list)
                    if not any(
                        _name_of(d) in ("staticmethod", "classmethod", "property") for d in n.decorator_list
                    ):
                        scan.calls.add(cls.methods[n.name])
        else:
            body = [fn.node]
        local_types = self._local_types(fn)
        typed = self._client_typed(fn)
        nodes = [node for root in body for node, annotation in _walk(root) if not annotation]
        called = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
        for node in nodes:
            self._visit(fn, node, local_types, typed, id(node) in called, scan)
        return scan

    def _local_types(self, fn: FunctionInfo) -> dict[str, set[str]]:
        types: dict[str, set[str]] = {}
        node = fn.node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
                types.setdefault(a.arg, set()).update(self._types(fn.module, a.annotation))
            for sub in ast.walk(node):
                if isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                    types.setdefault(sub.target.id, set()).update(self._types(fn.module, sub.annotation))
                elif isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Call):
                    keys = self._constructed(fn.module, sub.value)
                    for t in sub.targets:
                        if isinstance(t, ast.Name) and keys:
                            types.setdefault(t.id, set()).update(keys)
            # ``for x in <typed iterable>``: x is one of the classes the iterable's type names
            # (``list[ResultSink]`` -> ResultSink); two passes so that loops over loop variables work.
            for _ in range(2):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.For | ast.comprehension) and isinstance(sub.target, ast.Name):
                        it = sub.iter
                        if isinstance(it, ast.Call) and _name_of(it.func) in (
                            "list",
                            "tuple",
                            "sorted",
                            "reversed",
                        ):
                            it = it.args[0] if it.args else it
                        if isinstance(it, ast.Name):
                            found = types.get(it.id, set())
                        elif isinstance(it, ast.Attribute) and _name_of(it.value) == "self" and fn.cls:
                            found = self._self_attr_types(fn.cls, it.attr)
                        else:
                            found = set()
                        if found:
                            types.setdefault(sub.target.id, set()).update(found)
        return types

    def _visit(
        self,
        fn: FunctionInfo,
        node: ast.AST,
        local_types: dict[str, set[str]],
        typed: frozenset[str],
        is_called: bool,
        scan: Scan,
    ) -> None:
        where = f"{self.modules[fn.module].path.relative_to(self.base)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in ("self", "cls"):
                return
            key = self.symbol(fn.module, node.id)
            if key in self.classes:
                scan.instantiates.add(key)
            elif key:
                scan.calls.add(key)
        elif isinstance(node, ast.Call):
            if _name_of(node.func) == "cls" and fn.cls:
                scan.instantiates.add(fn.cls)
            if (
                _name_of(node.func) == "getattr"
                and len(node.args) >= 2
                and self._is_client(fn.module, node.args[0], typed)
                and not isinstance(node.args[1], ast.Constant)
                and not (isinstance(node.args[1], ast.Name) and node.args[1].id in fn.params)
            ):
                scan.dynamic.add(where)
            callee = _terminal(node.func)
            if callee in self.dispatchers and node.args:
                position = self.dispatchers[callee]
                arg = node.args[position] if position < len(node.args) else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    scan.ops.update(self._ops(fn, arg.value, None, where))
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in ("get_paginator", "get_waiter")
                and self._is_client(fn.module, func.value, typed)
                and node.args
            ):
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    scan.ops.update(self._ops(fn, arg.value, func.attr, where, func.value))
            if not isinstance(node.func, ast.Name | ast.Attribute):
                scan.dispatch.add((None, "__call__"))
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            recv, attr = node.value, node.attr
            if self._is_client(fn.module, recv, typed):
                scan.ops.update(self._ops(fn, attr, None, where, recv))
            if isinstance(recv, ast.Call) and _name_of(recv.func) == "super" and fn.cls:
                for base in self.classes[fn.cls].bases:
                    key = self.lookup(base, attr)
                    if key:
                        scan.calls.add(key)
                return
            if isinstance(recv, ast.Name) and recv.id in ("self", "cls") and fn.cls:
                scan.dispatch.add((frozenset({fn.cls}), attr))
                return
            if isinstance(recv, ast.Name):
                target = self.module_alias(fn.module, recv.id)
                if target:
                    key = self.symbol(target, attr)
                    if key in self.classes:
                        scan.instantiates.add(key)
                    elif key:
                        scan.calls.add(key)
                    return
                key = self.symbol(fn.module, recv.id)
                if key in self.classes:
                    scan.dispatch.add((frozenset({key}), attr))
                    return
                if recv.id in self.modules[fn.module].aliases and recv.id not in local_types and not key:
                    return  # ``os.open``, ``json.dumps``: a module or name from outside the packages
                types = local_types.get(recv.id)
            elif isinstance(recv, ast.Attribute) and _name_of(recv.value) == "self" and fn.cls:
                types = self._self_attr_types(fn.cls, recv.attr)
            elif isinstance(recv, ast.Call):
                types = set(self._constructed(fn.module, recv)) or None  # ``Store(client).get()``
            else:
                types = None
            # A receiver of unknown type: only a call is taken for a method call (``f.check`` of a
            # loop variable is data, ``store.done(...)`` is a call).
            if types:
                scan.dispatch.add((frozenset(types), attr))
            elif is_called:
                scan.dispatch.add((None, attr))

    def _self_attr_types(self, cls_key: str, attr: str) -> set[str]:
        """What ``self.<attr>`` may hold: annotated/assigned types, or a property's return type."""
        out: set[str] = set()
        for key in self.mro(cls_key):
            out.update(self.classes[key].attr_types.get(attr, set()))
            method = self.classes[key].methods.get(attr)
            node = self.functions[method].node if method else None
            if isinstance(node, ast.FunctionDef) and any(
                _name_of(d) in ("property", "cached_property") for d in node.decorator_list
            ):
                out.update(self._types(self.classes[key].module, node.returns))
        return out

    def _ops(
        self, fn: FunctionInfo, name: str, kind: str | None, where: str, recv: ast.expr | None = None
    ) -> set[Op]:
        """The operation(s) ``name`` stands for at this site (empty when it names none)."""
        models = _models()
        hint = _client_call_service(recv) if isinstance(recv, ast.Call) else None
        candidates: dict[str, tuple[str, ...]] = {}
        for service, ops in models.items():
            if kind == "get_waiter":
                if name in _waiters(service):
                    candidates[service] = (_waiters(service)[name],)
            elif name in ops:
                candidates[service] = (ops[name],)
            elif service == "s3" and name in S3_TRANSFER and kind is None:
                candidates[service] = S3_TRANSFER[name]
        if not candidates:
            return set()
        if hint in candidates:
            chosen = [hint]
        elif len(candidates) == 1:
            chosen = list(candidates)
        else:
            chosen = [s for s in candidates if s in self.modules[fn.module].hints]
            if len(chosen) != 1:
                raise AnalysisError(
                    f"{where}: {name!r} is an operation of {sorted(candidates)}; the module's hints "
                    f'{sorted(self.modules[fn.module].hints)} do not decide which (add a client("svc") '
                    "literal or a mypy_boto3_<svc> import)"
                )
        return {Op(s, o, where) for s in chosen for o in candidates[s]}

    # -- classes ----------------------------------------------------------------------------------
    @functools.cache  # noqa: B019 - the index lives as long as the test session
    def mro(self, key: str) -> list[str]:
        out: list[str] = []
        stack = [key]
        while stack:
            k = stack.pop(0)
            if k in out or k not in self.classes:
                continue
            out.append(k)
            stack.extend(self.classes[k].bases)
        return out

    @functools.cache  # noqa: B019
    def lookup(self, cls_key: str, method: str) -> str | None:
        for key in self.mro(cls_key):
            if method in self.classes[key].methods:
                return self.classes[key].methods[method]
        return None

    @functools.cache  # noqa: B019
    def subclasses(self, cls_key: str) -> frozenset[str]:
        return frozenset(k for k in self.classes if cls_key in self.mro(k))


@dataclass
class Scan:
    """What one function refers to."""

    calls: set[str] = field(default_factory=set)
    instantiates: set[str] = field(default_factory=set)
    #: (possible receiver classes, or None when unknown, attribute name)
    dispatch: set[tuple[frozenset[str] | None, str]] = field(default_factory=set)
    ops: set[Op] = field(default_factory=set)
    #: ``getattr(client, <computed name>)``: calls whose operation only the data knows
    dynamic: set[str] = field(default_factory=set)


@dataclass
class Reach:
    """The functions reachable from ``roots`` and the AWS operations they refer to."""

    index: CodeIndex
    roots: Sequence[str]
    excluded: frozenset[str] = frozenset()
    functions: set[str] = field(default_factory=set)
    instantiated: set[str] = field(default_factory=set)
    #: every reference (reachability)
    edges: dict[str, set[str]] = field(default_factory=dict)
    #: references whose target is known: direct calls, ``self``/typed receivers, constructors -
    #: not a module's top-level code, nor a method picked by name for a receiver of unknown type
    strong_edges: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [r for r in self.roots if r not in self.index.functions]
        if missing:
            raise AnalysisError(f"no such functions: {missing}")
        self._solve()

    def _solve(self) -> None:
        """Rapid type analysis to a fixpoint: traverse from the roots, dispatching method calls to the
        classes instantiated so far; repeat while a traversal instantiates a class not seen before."""
        functions = set(self.index.functions)
        while True:
            before = set(self.instantiated)
            todo = [r for r in self.roots if r not in self.excluded]
            seen: set[str] = set()
            while todo:
                key = todo.pop()
                if key in seen:
                    continue
                seen.add(key)
                scan = self.index.scan(key)
                self.instantiated |= scan.instantiates
                strong = set(scan.calls) | self._class_entry(scan.instantiates)
                weak = {f"{self.index.functions[key].module}:<module>"}
                for types, attr in scan.dispatch:
                    (strong if types is not None else weak).update(self._dispatch(types, attr))
                strong = (strong - self.excluded) & functions
                targets = strong | ((weak - self.excluded) & functions)
                self.edges[key] = targets
                self.strong_edges[key] = strong
                todo.extend(targets - seen)
            self.functions = seen
            if self.instantiated == before:
                return

    def _class_entry(self, classes: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for cls in classes:
            for key in self.index.mro(cls):
                info = self.index.classes[key]
                out.add(f"{key}.<class>")
                framework = self.index.classes[cls].external_base
                out.update(
                    k
                    for name, k in info.methods.items()
                    if framework or (name.startswith("__") and name.endswith("__"))
                )
        return out

    def _dispatch(self, types: frozenset[str] | None, attr: str) -> set[str]:
        out: set[str] = set()
        if types is None:
            if attr in BUILTIN_METHODS:
                return out
            candidates: Iterable[str] = self.instantiated
        else:
            candidates = set()
            for t in types:
                if t == OPAQUE:
                    continue
                info = self.index.classes[t]
                if info.protocol:
                    candidates |= {c for c in self.instantiated if self.index.lookup(c, attr)}
                else:
                    direct = self.index.lookup(t, attr)
                    if direct:
                        out.add(direct)
                    candidates |= self.index.subclasses(t) & self.instantiated
        for cls in candidates:
            key = self.index.lookup(cls, attr)
            if key:
                out.add(key)
        return out

    def path_to(self, target: str) -> list[str]:
        """One chain of references from a root to ``target`` (for error messages)."""
        parents: dict[str, str | None] = {r: None for r in self.roots if r in self.functions}
        todo = list(parents)
        while todo:
            key = todo.pop(0)
            if key == target:
                chain = [key]
                while parents[chain[-1]] is not None:
                    chain.append(parents[chain[-1]])  # type: ignore[arg-type]
                return chain[::-1]
            for nxt in sorted(self.edges.get(key, ())):
                if nxt not in parents:
                    parents[nxt] = key
                    todo.append(nxt)
        return []

    def dynamic(self) -> set[str]:
        """Where reachable code calls a client operation whose name is computed from data."""
        return {site for k in self.functions for site in self.index.scan(k).dynamic}

    def sites(self, op: Op) -> list[str]:
        """The reachable functions that refer to ``op``."""
        return sorted(k for k in self.functions if op in self.index.scan(k).ops)

    def ops(self, within: Iterable[str] | None = None) -> set[Op]:
        """Operations of the reachable functions, or of those ``within`` reaches over strong edges."""
        keys = self.functions if within is None else self.closure(within)
        return {op for k in keys for op in self.index.scan(k).ops}

    def closure(self, starts: Iterable[str]) -> set[str]:
        """The reachable functions that ``starts`` (reachable ones only) reach over strong edges."""
        todo = [s for s in starts if s in self.functions]
        seen: set[str] = set()
        while todo:
            key = todo.pop()
            if key not in seen:
                seen.add(key)
                todo.extend(self.strong_edges.get(key, ()))
        return seen


# --- helpers ----------------------------------------------------------------------------------


def _absolute(module: str, is_package: bool, target: str | None, level: int) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _name_of(expr: ast.AST | None) -> str:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Subscript):
        return _name_of(expr.value)
    return ""


def _terminal(expr: ast.AST | None) -> str:
    return _name_of(expr) if isinstance(expr, ast.Name | ast.Attribute) else ""


def _is_client_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and bool(_CLIENT_NAME.search(_terminal(node.func) or "-"))


def _client_call_service(node: ast.AST | None) -> str | None:
    if not isinstance(node, ast.Call) or not _is_client_call(node) or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value in SERVICES:
        return arg.value
    return None


def _walk(root: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under ``root`` with whether it sits in an annotation (those are types, not uses)."""
    stack: list[tuple[ast.AST, bool]] = [(root, False)]
    while stack:
        node, in_annotation = stack.pop()
        yield node, in_annotation
        for name, value in ast.iter_fields(node):
            annotation = in_annotation or name in ("annotation", "returns")
            if isinstance(node, ast.If) and name == "test" and _name_of(node.test) == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.If) and _name_of(node.test) == "TYPE_CHECKING" and name == "body":
                continue
            children = value if isinstance(value, list) else [value]
            for child in children:
                if isinstance(child, ast.AST):
                    stack.append((child, annotation))
