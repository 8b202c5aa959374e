"""Reading the Slicer glue with ``ast``: which Slicer APIs does it use (names, called methods of objects whose
Slicer class is known, inherited methods, keywords)? ``slicer_api`` checks the result against the API list."""

from __future__ import annotations

import ast
import re
import unittest
from typing import NamedTuple

# --------------------------------------------------------------------------------------------------
# Reading the glue: which Slicer APIs does it use?
# --------------------------------------------------------------------------------------------------

#: Modules (and the two application singletons) whose members are API names of their own.
NAMESPACES = {
    "slicer", "slicer.util", "slicer.app", "slicer.mrmlScene", "slicer.modules", "slicer.i18n", "slicer.packaging",
    "slicer.cli", "slicer.testing", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", "sitkUtils",
    "PyTorchUtils", "SegmentEditorEffects", "qSlicerSegmentationsEditorEffectsPythonQt",
}
#: Every member is an API, never a class (``slicer.mrmlScene.NodeAddedEvent``, ``sitkUtils.PushVolumeToSlicer``).
SINGLETONS = {"slicer.app", "slicer.mrmlScene", "sitkUtils"}
#: Names the surface list gives without their module: 'slicer.vtkMRMLScene.X' is listed as 'vtkMRMLScene.X'.
_UNQUALIFIED = ("slicer.ScriptedLoadableModule.", "SegmentEditorEffects.", "qSlicerSegmentationsEditorEffectsPythonQt.")
#: Names a star import brings in, by module: ``from SegmentEditorEffects import *`` as in Slicer's effect template.
STAR_PREFIXES = {"SegmentEditorEffects": "AbstractScriptedSegmentEditor",
                 "slicer.ScriptedLoadableModule": "ScriptedLoadableModule"}
#: Logic classes of ``slicer.modules.<name>.logic()`` and ``slicer.util.getModuleLogic("<Name>")``.
MODULE_LOGICS = {"segmentations": "vtkSlicerSegmentationsModuleLogic",
                 "terminologies": "vtkSlicerTerminologiesModuleLogic", "volumes": "vtkSlicerVolumesLogic",
                 "pytorchutils": "PyTorchUtils.PyTorchUtilsLogic"}
#: What ``slicer.modules.<name>`` is: the listed module classes.
MODULE_TYPE = "qSlicerAbstractModule | qSlicerAbstractCoreModule"
#: Return types of the calls whose results the glue calls methods on.
RETURNS = {
    "slicer.mrmlScene.GetNthNode": "vtkMRMLNode",
    "slicer.mrmlScene.GetNodeByID": "vtkMRMLNode",
    "slicer.mrmlScene.GetSubjectHierarchyNode": "vtkMRMLSubjectHierarchyNode",
    "slicer.app.commandOptions": "slicer.app.commandOptions()",
    "vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode": "vtkMRMLSubjectHierarchyNode",
    "vtkMRMLSegmentationNode.GetSegmentation": "vtkSegmentation",
    "vtkMRMLSegmentationNode.GetDisplayNode": "vtkMRMLSegmentationDisplayNode",
    "vtkMRMLScalarVolumeNode.GetDisplayNode": "vtkMRMLScalarVolumeDisplayNode",
    "vtkMRMLLabelMapVolumeNode.GetDisplayNode": "vtkMRMLLabelMapVolumeDisplayNode",
    "vtkSegmentation.GetSegment": "vtkSegment",
    "vtkSegmentation.GetNthSegment": "vtkSegment",
    "vtkMRMLSegmentEditorNode.GetSegmentationNode": "vtkMRMLSegmentationNode",
    "vtkMRMLSegmentEditorNode.GetSourceVolumeNode": "vtkMRMLScalarVolumeNode",
    "scriptedEffect.parameterSetNode": "vtkMRMLSegmentEditorNode",
    "scriptedEffect.sourceVolumeImageData": "vtkOrientedImageData",
    "scriptedEffect.defaultModifierLabelmap": "vtkOrientedImageData",
    "scriptedEffect.selectedSegmentLabelmap": "vtkOrientedImageData",
    "scriptedEffect.referenceGeometryImage": "vtkOrientedImageData",
    "qSlicerSegmentEditorScriptedEffect.self": "AbstractScriptedSegmentEditorEffect",
}
#: Qt widget classes: members the list does not name may be inherited from Qt (``show``, ``setToolTip``), which the
#: list does not cover, so only the class itself and the members it does list are checked.
QT_WIDGET = re.compile(r"q(MRML\w+|Slicer\w*Widget)")
#: Calls whose first argument (a class-name string) is the class of the node(s) they return.
BY_CLASS_NAME = {"slicer.mrmlScene.AddNewNodeByClass", "slicer.mrmlScene.CreateNodeByClass",
                 "slicer.mrmlScene.GetFirstNodeByClass", "slicer.util.getNodesByClass",
                 "slicer.util.getFirstNodeByClassByName"}


def _canonical(qualified: str) -> str:
    """The surface list's spelling: 'slicer.vtkMRMLScene.X' -> 'vtkMRMLScene.X'; module prefixes of classes dropped."""
    for prefix in _UNQUALIFIED:
        if qualified.startswith(prefix):
            return qualified[len(prefix):]
    if re.match(r"slicer\.(vtk|q[A-Z])", qualified):
        return qualified[len("slicer."):]
    return qualified


def _is_class_name(name: str) -> bool:
    return bool(re.match(r"(vtk|q[A-Z]|[A-Z])", name))


class Ref(NamedTuple):
    """What an expression is: ``ns`` a module, ``cls`` a Slicer class, ``obj`` an instance of Slicer class(es)
    (``a | b``), ``api`` a listed member (its own members are unknown), ``module`` ``slicer.modules.<name>``,
    ``modlogic`` its ``.logic``, ``local``/``localcls`` an instance of / a class defined in the file, ``func`` a
    function of the file."""

    kind: str
    name: str


class Use:
    """One use of a Slicer API found in a file: ``kind`` api (call or attribute), import, class or inherited."""

    def __init__(self, name: str, line: int, keywords: tuple[str, ...] = (), kind: str = "api"):
        self.name, self.line, self.keywords, self.kind = name, line, keywords, kind

    def __repr__(self) -> str:
        return f"{self.name} (line {self.line})"


class _ClassInfo:
    def __init__(self, node: ast.ClassDef):
        self.node = node
        self.bases: list[ast.expr] = list(node.bases)
        self.methods = {n.name: n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.attributes: dict[str, Ref] = {}
        #: attributes assigned on self anywhere: calling one is not calling an inherited method
        targets = [t for sub in ast.walk(node) if isinstance(sub, (ast.Assign, ast.AnnAssign))
                   for t in (sub.targets if isinstance(sub, ast.Assign) else [sub.target])]
        self.assigned = {t.attr for t in targets
                         if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
        self.wrapper = any((isinstance(d, ast.Name) and d.id == "parameterNodeWrapper")
                           or (isinstance(d, ast.Attribute) and d.attr == "parameterNodeWrapper")
                           for d in node.decorator_list)


class GlueReader(ast.NodeVisitor):
    """Collects the Slicer APIs a file uses (see the module docstring)."""

    def __init__(self, tree: ast.Module):
        self.uses: list[Use] = []
        self.imports: dict[str, str] = {}  # local name -> qualified Slicer name
        self.star: list[str] = []  # Slicer modules star-imported
        self.classes: dict[str, _ClassInfo] = {}
        self.functions: dict[str, ast.FunctionDef] = {}
        self.env: dict[str, Ref] = {}
        self.current_class: str | None = None
        self._handled: set[int] = set()
        self._collect(tree)

    # -- what the file defines -----------------------------------------------------------------------

    def _collect(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):  # imports anywhere: heavy and optional ones happen inside functions
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in NAMESPACES or alias.name.split(".")[0] == "slicer":
                        self.imports[alias.asname or alias.name.split(".")[0]] = \
                            alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level \
                    and (node.module in NAMESPACES or node.module.split(".")[0] == "slicer"):
                for alias in node.names:
                    if alias.name == "*":
                        self.star.append(node.module)
                        continue
                    qualified = f"{node.module}.{alias.name}"
                    self.imports[alias.asname or alias.name] = qualified
                    if qualified not in NAMESPACES:
                        self.uses.append(Use(_canonical(qualified), node.lineno, kind="import"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                self.classes[node.name] = _ClassInfo(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[node.name] = node
        self.env = self._scope_env(tree.body, walk=False)
        for _ in range(2):  # attribute types may depend on other attributes' types
            for name, info in self.classes.items():
                outer, self.current_class = self.current_class, name
                for stmt in info.node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        t = self._annotation(stmt.annotation)
                        if t:
                            info.attributes[stmt.target.id] = t
                for method in info.methods.values():
                    env = self._function_env(method)
                    saved, self.env = self.env, env
                    for sub in ast.walk(method):
                        target, t = None, None
                        if isinstance(sub, ast.Assign) and len(sub.targets) == 1:
                            target, t = sub.targets[0], self._value_type(sub.value)
                        elif isinstance(sub, ast.AnnAssign):
                            target, t = sub.target, self._annotation(sub.annotation)
                        if t and isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                                and target.value.id == "self":
                            info.attributes.setdefault(target.attr, t)
                    self.env = saved
                self.current_class = outer

    # -- what names mean -------------------------------------------------------------------------

    def _dotted(self, qualified: str) -> Ref | None:
        """Ref of a dotted Slicer name as imported: 'slicer.util' -> ns; 'slicer.util.getNode' -> api."""
        if qualified in NAMESPACES:
            return Ref("ns", qualified)
        parent, _, last = qualified.rpartition(".")
        base = self._dotted(parent) if parent else None
        return self._member(base, last) if base else None

    def _member(self, base: Ref | None, attr: str) -> Ref | None:
        if base is None:
            return None
        kind, name = base
        if kind == "ns":
            full = f"{name}.{attr}"
            if full in NAMESPACES:
                return Ref("ns", full)
            if name == "slicer.modules":  # <name>: a module; <Name>Widget etc.: Python objects Slicer adds
                return Ref("module", attr.lower()) if attr[:1].islower() else None
            if name not in SINGLETONS and _is_class_name(attr):
                return Ref("cls", _canonical(full))
            return Ref("api", _canonical(full))
        if kind == "module":
            return Ref("modlogic", name) if attr == "logic" else \
                Ref("api", " | ".join(f"{t}.{attr}" for t in MODULE_TYPE.split(" | ")))
        if kind in ("obj", "cls"):
            names = [f"{t}.{attr}" for t in name.split(" | ")]
            if name == "vtkMRMLNode":  # a node of unknown class (GetNodeByID): a method of any node class will do
                names.append(f"vtkMRML*Node.{attr}")
            return Ref("api", " | ".join(names))
        if kind == "local":
            if attr == "scriptedEffect":
                return Ref("obj", "scriptedEffect")
            info = self.classes[name]
            if attr in info.attributes:
                return info.attributes[attr]
            for base_name in self._local_bases(name):
                if attr in self.classes[base_name].attributes:
                    return self.classes[base_name].attributes[attr]
        return None

    def _resolve(self, node: ast.AST) -> Ref | None:
        if isinstance(node, ast.Name):
            if node.id == "self" and self.current_class:
                return Ref("local", self.current_class)
            if node.id in self.env:
                return self.env[node.id]
            if node.id in self.imports:
                return self._dotted(self.imports[node.id])
            if node.id in self.classes:
                return Ref("localcls", node.id)
            if node.id in self.functions:
                return Ref("func", node.id)
            if node.id in ("slicer", "sitkUtils"):
                return Ref("ns", node.id)
            if node.id == "scriptedEffect":
                return Ref("obj", "scriptedEffect")
            for module in self.star:
                if node.id.startswith(STAR_PREFIXES.get(module, "\0")):
                    return Ref("cls", _canonical(f"{module}.{node.id}"))
            return None
        if isinstance(node, ast.Attribute):
            return self._member(self._resolve(node.value), node.attr)
        if isinstance(node, ast.Call):
            return self._returns(node)
        return None

    def _returns(self, call: ast.Call) -> Ref | None:
        """What a call gives back, where that matters: nodes, logics, segmentations, instances of local classes."""
        if isinstance(call.func, ast.Attribute):
            owner = self._resolve(call.func.value)
            if owner is not None and owner.kind == "local":
                return self._method_returns(owner.name, call.func.attr)
        func = self._resolve(call.func)
        if func is None:
            return None
        kind, name = func
        if kind == "cls":
            return Ref("obj", name)
        if kind == "localcls":
            return Ref("local", name)
        if kind == "modlogic":
            return Ref("obj", MODULE_LOGICS[name]) if name in MODULE_LOGICS else None
        if kind == "func":
            return self._declared_returns(self.functions[name])
        if kind != "api":
            return None
        first = call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else None
        if name in BY_CLASS_NAME and isinstance(first, str):
            return Ref("obj", first)
        if name == "slicer.util.getModuleLogic" and isinstance(first, str):
            return Ref("obj", MODULE_LOGICS[first.lower()]) if first.lower() in MODULE_LOGICS else None
        if name == "sitkUtils.PushVolumeToSlicer":
            kw = {k.arg: k.value for k in call.keywords}
            cls = kw.get("className") or (call.args[3] if len(call.args) > 3 else None)
            return Ref("obj", cls.value if isinstance(cls, ast.Constant) else "vtkMRMLScalarVolumeNode")
        for candidate in name.split(" | "):
            if candidate in RETURNS:
                return Ref("obj", RETURNS[candidate])
        return None

    def _method_returns(self, cls: str, method: str) -> Ref | None:
        for name in (cls, *self._local_bases(cls)):
            node = self.classes[name].methods.get(method)
            if node is not None:
                outer, self.current_class = self.current_class, name
                try:
                    return self._declared_returns(node)
                finally:
                    self.current_class = outer
        return None

    def _declared_returns(self, node: ast.FunctionDef) -> Ref | None:
        """A function's return annotation, or else the local class its first ``return LocalClass(...)`` builds
        (the template's ``getParameterNode`` returns its parameter-node wrapper that way, unannotated)."""
        if node.returns is not None:
            return self._annotation(node.returns)
        for sub in ast.walk(node):
            if isinstance(sub, ast.Return) and isinstance(sub.value, ast.Call) \
                    and isinstance(sub.value.func, ast.Name) and sub.value.func.id in self.classes:
                return Ref("local", sub.value.func.id)
        return None

    def _annotation(self, node: ast.AST | None) -> Ref | None:
        """The type an annotation names (``X``, ``"X"``, ``X | None``, ``Optional[X]``, ``Annotated[X, ...]``)."""
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
            if isinstance(node, ast.Name) and re.fullmatch(r"vtk\w+", node.id) and not self._resolve(node):
                return Ref("obj", node.id)  # "vtkMRMLScalarVolumeNode" written as a string, not imported
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self._annotation(node.left) or self._annotation(node.right)
        if isinstance(node, ast.Subscript):
            head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            if head in ("Optional", "Annotated", "Union"):
                inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
                return self._annotation(inner[0]) if head != "Union" else \
                    next((t for t in (self._annotation(e) for e in inner) if t), None)
            return None
        ref = self._resolve(node)
        if ref is None:
            return None
        if ref.kind == "cls":
            return Ref("obj", ref.name)
        if ref.kind == "localcls":
            return Ref("local", ref.name)
        return None

    def _value_type(self, value: ast.AST) -> Ref | None:
        """Type of an assigned value: only results of calls and typed names carry one."""
        if isinstance(value, (ast.Call, ast.Name, ast.Attribute)):
            ref = self._resolve(value)
        else:
            return None
        return ref if ref is not None and ref.kind in ("obj", "local") else None

    def _local_bases(self, cls: str) -> list[str]:
        """Local classes ``cls`` derives from, nearest first."""
        out, todo = [], [cls]
        while todo:
            for base in self.classes[todo.pop(0)].bases:
                if isinstance(base, ast.Name) and base.id in self.classes and base.id not in out:
                    out.append(base.id)
                    todo.append(base.id)
        return out

    # -- scopes ------------------------------------------------------------------------------------

    def _scope_env(self, body: list[ast.stmt], walk: bool = True, start: dict[str, Ref] | None = None) -> dict:
        env = dict(start or {})
        nodes = [n for stmt in body for n in (ast.walk(stmt) if walk else [stmt])]
        for _ in range(3):  # assignments typed from earlier assignments
            saved, self.env = self.env, env
            for sub in nodes:
                if isinstance(sub, ast.Assign) and len(sub.targets) == 1 and isinstance(sub.targets[0], ast.Name):
                    t = self._value_type(sub.value)
                    if t:
                        env[sub.targets[0].id] = t
                elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                    t = self._annotation(sub.annotation)
                    if t:
                        env[sub.target.id] = t
                elif isinstance(sub, ast.For) and isinstance(sub.target, ast.Name) and isinstance(sub.iter, ast.Call):
                    t = self._value_type(sub.iter)  # getNodesByClass(...) yields nodes of that class
                    if t:
                        env[sub.target.id] = t
            self.env = saved
        return env

    def _function_env(self, node: ast.FunctionDef) -> dict[str, Ref]:
        env = dict(self.env)
        for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            t = self._annotation(arg.annotation)
            if t:
                env[arg.arg] = t
            elif arg.arg in env:
                del env[arg.arg]  # a parameter shadows an outer name
        return self._scope_env(node.body, start=env)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        outer, self.current_class = self.current_class, node.name if node.name in self.classes else None
        self.generic_visit(node)
        self.current_class = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer = self.env
        self.env = self._function_env(node)
        self.generic_visit(node)
        self.env = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    # -- uses --------------------------------------------------------------------------------------

    def _slicer_bases(self, cls: str) -> tuple[list[str], bool]:
        """Slicer classes ``cls`` (and its local bases) derive from, and whether any base is unknown."""
        names, unknown = [], False
        for name in (cls, *self._local_bases(cls)):
            info = self.classes[name]
            if info.wrapper:
                names.append("ParameterNodeWrapperInstance")
            for base in info.bases:
                ref = self._resolve(base)
                if ref is not None and ref.kind == "cls":
                    names.append(ref.name)
                elif ref is None or ref.kind != "localcls":
                    unknown = True
        return names, unknown

    def _inherited(self, cls: str, method: str, line: int, keywords=(), via_super: bool = False) -> None:
        """A method a local class does not define (or reaches through ``super()``) must come from a Slicer base."""
        chain = [cls, *self._local_bases(cls)]
        if any(method in self.classes[c].methods for c in (chain[1:] if via_super else chain)):
            return
        if not via_super and any(method in self.classes[c].assigned for c in chain):
            return  # an attribute holding a callable (self.logCallback = ...), not a method
        bases, unknown = self._slicer_bases(cls)
        if not bases or unknown:
            return  # nothing to check, or the method may come from a base we know nothing about
        if any(b.startswith("ScriptedLoadableModuleTest") for b in bases) and hasattr(unittest.TestCase, method):
            return
        self.uses.append(Use(" | ".join(f"{b}.{method}" for b in bases), line, tuple(keywords), kind="inherited"))

    def _record(self, ref: Ref | None, line: int, keywords=()) -> None:
        if ref is None:
            return
        if ref.kind == "api":
            self.uses.append(Use(ref.name, line, tuple(keywords)))
        elif ref.kind == "cls":
            self.uses.append(Use(ref.name, line, tuple(keywords), kind="class"))

    def visit_Call(self, node: ast.Call) -> None:
        keywords = tuple(k.arg for k in node.keywords if k.arg)
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = func.value
            if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name) \
                    and receiver.func.id == "super" and self.current_class:
                self._inherited(self.current_class, func.attr, node.lineno, keywords, via_super=True)
                self._handled.add(id(func))
            else:
                owner = self._resolve(receiver)
                if owner is not None and owner.kind == "local":
                    self._inherited(owner.name, func.attr, node.lineno, keywords)
                    self._handled.add(id(func))
                else:
                    ref = self._member(owner, func.attr)
                    if ref is not None and ref.kind in ("api", "cls"):
                        self._record(ref, node.lineno, keywords)
                        self._handled.add(id(func))
        elif isinstance(func, ast.Name) and func.id not in self.env:
            ref = self._resolve(func)
            if ref is not None and ref.kind == "api":
                self._record(ref, node.lineno, keywords)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if id(node) not in self._handled:
            self._record(self._resolve(node), node.lineno)
        self.visit(node.value)


def slicer_api_uses(source: str) -> list[Use]:
    """Every Slicer API use in a Python source (see ``GlueReader``)."""
    tree = ast.parse(source)
    reader = GlueReader(tree)
    reader.visit(tree)
    return reader.uses
