"""The ``c`` format: a shared library of allocation-free kernels with a C ABI, no Python inside.

For each kernel, numba compiles its out-parameter source (:func:`kernel_source`:
pointers for arrays and outputs, ``int32`` return) without its CPython and cfunc
wrappers. A small LLVM IR shim, written here and linked into numba's module,
exports ``int <name>(...)`` and calls numba's inner function with a scratch
return slot and exception slot, passing its status through. Every other symbol
is made internal and global dead-code elimination runs with the optimisation
pipeline, so the object file refers to nothing but libm. The objects are linked
with the system C compiler (``cc -shared``). Code is generated for a generic CPU
of the build machine's architecture, so the library runs on any machine of that
architecture.

:func:`gradc.aot.build` hands this module the lowered kernels and writes the
header; this module imports nothing of gradc.aot (the build imports it).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np

from .aot_errors import BuildError
from .emit import assign_names, literal, statements
from .ir import ArrayOut, leaves


# --- the out-parameter source ------------------------------------------------------------
def kernel_source(k, func_name):
    """The out-parameter form of ``k``: ``def f(<inputs>, <outputs>)`` writing every result
    into caller arrays (arrays as flat C-order pointers) and returning 0. No allocation."""
    g = k.graph
    if getattr(g, "whole_params", None) or any(getattr(n, "shape", ()) for n in g.nodes):
        raise BuildError(f"gradc build --format c: {k.public} uses whole-array (NumPy-level) "
                         "code; the C format supports element-wise (unrolled) graphs only.")
    names, absorbed, namer = assign_names(g, g.name)
    np_alias = namer.fresh("np")
    params = names["params"]
    out_leaves = list(leaves(g.out_tree))
    outs = [namer.fresh(f"out{i}") for i in range(len(out_leaves))]
    lines = [f"def {func_name}({', '.join(params + outs)}):"]
    uses = g.users()

    def text(node):
        return literal(node.attrs[0], np_alias) if node.op == "const" else names[node.id]

    for node in g.inputs:
        _, _, p, index = node.attrs
        if index is not None and uses[node.id]:
            flat = int(np.ravel_multi_index(index, g.params[p][1]))
            lines.append(f"    {names[node.id]} = {params[p]}[{flat}]")
    # the body is the same statements the JIT path emits
    lines.extend("    " + line for line in statements(g, names, absorbed, namer, np_alias))
    for out, leaf in zip(outs, out_leaves):
        if isinstance(leaf, ArrayOut):
            for j, i in enumerate(leaf.indices):
                lines.append(f"    {out}[{j}] = {text(g.outputs[i])}")
        else:
            lines.append(f"    {out}[0] = {text(g.outputs[leaf])}")
    lines.append("    return 0")
    return f"import numpy as {np_alias}\n\n\n" + "\n".join(lines) + "\n"


# --- numba's compile and the C-ABI shim --------------------------------------------------
def _compile_kernel(kernel, workdir):
    """numba's compile result for the out-parameter form of ``kernel``."""
    from numba import float64, int32, njit, types

    func_name = f"{kernel.public}__kernel"
    path = os.path.join(workdir, f"_gradc_kernel_{kernel.public}.py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(kernel_source(kernel, func_name))
    mod_name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ptr = types.CPointer(float64)
    nout = sum(1 for _ in leaves(kernel.graph.out_tree))
    sig = int32(*[float64 if s is None else ptr for s in kernel.shapes], *[ptr] * nout)
    dispatcher = njit(sig, error_model="numpy", no_cpython_wrapper=True,
                      no_cfunc_wrapper=True)(getattr(module, func_name))
    sys.modules.pop(mod_name, None)
    return dispatcher.overloads[sig.args]


def _object(cres, export_name, target_machine, llvm):
    """Machine code for numba's module with the C-ABI shim ``export_name`` as its only export."""
    inner = cres.fndesc.llvm_func_name
    module = llvm.parse_assembly(cres.library.get_llvm_str())
    arg_types = [str(a.type) for a in module.get_function(inner).arguments]
    # numba's calling convention: (return slot, exception slot, *arguments) -> status
    params = ", ".join(f"{t} %a{i}" for i, t in enumerate(arg_types[2:]))
    shim = llvm.parse_assembly(f"""
declare i32 @"{inner}"({", ".join(arg_types)})

define i32 @"{export_name}"({params}) {{
entry:
  %ret = alloca i32
  %exc = alloca ptr
  %status = call i32 @"{inner}"(ptr %ret, ptr %exc, {params})
  ret i32 %status
}}
""")
    shim.triple, shim.data_layout = module.triple, module.data_layout
    module.link_in(shim)
    for fn in module.functions:
        if not fn.is_declaration and fn.name != export_name:
            fn.linkage = llvm.Linkage.internal
    for gv in module.global_variables:
        if not gv.is_declaration:
            gv.linkage = llvm.Linkage.internal
    builder = llvm.create_pass_builder(target_machine, llvm.create_pipeline_tuning_options(3))
    passes = builder.getModulePassManager()
    passes.add_global_dead_code_eliminate_pass()
    passes.run(module, builder)
    module.verify()
    return target_machine.emit_object(module)


def build_library(kernels, name, outdir, workdir, cc):
    """Write ``lib<name>.so`` to ``outdir``: one exported C function per kernel."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(reloc="pic", codemodel="default", opt=3)
    objects = []
    for k in kernels:
        obj = os.path.join(workdir, f"{k.public}.o")
        with open(obj, "wb") as fh:
            fh.write(_object(_compile_kernel(k, workdir), k.public, machine, llvm))
        objects.append(obj)
    lib = os.path.join(outdir, f"lib{name}.so")
    cmd = [*cc.split(), "-shared", "-fPIC", "-o", lib, *objects, "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"gradc build --format c: linking failed: {' '.join(cmd)}\n"
                         f"{done.stderr[-2000:]}")
    return lib
