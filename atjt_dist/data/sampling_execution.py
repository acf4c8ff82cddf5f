"""How the batch kernels of the data path run: prefetching ahead, serial or parallel.

- Each batch kernel is one function over a range of rows; the serial version runs it over the
  batch, the parallel one over chunks of it in a ``prange`` loop, with the same bits either
  way. Batches smaller than :data:`PARALLEL_MIN_ROWS` run serially: a training batch of a few
  hundred rows costs tens of microseconds, less than waking and joining a thread team
  (benchmarks/sampler.md), and each rank's loader is a process of its own.
- On a real-sized dataset the data path is bound by cache misses (random users' offsets, items
  and item sets), not by arithmetic, and each row's misses form a chain (user -> offset ->
  items). The kernels prefetch ahead: while row r is computed, the lines of row r+8 and the
  offset of row r+16 are requested, so that the misses of different rows overlap.
- Per-row loops call no helper that takes arrays (the alias draw and the binary search are
  written out where it matters): with such a call in its loop, even an inlined one, the
  corruption loop measured five times slower (most likely numba's reference counting of the
  array arguments at every call).
"""

from __future__ import annotations

import numba
from llvmlite import ir as llvm_ir
from llvmlite.binding import llvm_version_info
from numba.core import cgutils, types
from numba.extending import intrinsic

# Prefetch distance of the batch kernels, in rows: row r + _AHEAD's cache lines are requested
# while row r is computed, and row r + 2 * _AHEAD's offsets before that (see the module
# docstring; 4 to 16 measure alike, 2 and 32 worse). _CHUNK rows make one task of a parallel
# loop, and from PARALLEL_MIN_ROWS rows the public functions run their parallel loop.
_AHEAD = 8
_CHUNK = 1024
PARALLEL_MIN_ROWS = 16_384


# llvm.prefetch's name carries its pointer type: "p0" with LLVM's opaque pointers (LLVM >= 15,
# every llvmlite numba supports now), "p0i8" before.
_PREFETCH = "llvm.prefetch.p0" if llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to bring ``arr[idx]`` into the cache (no effect on results; no bounds check)."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty, _ = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = llvm_ir.IntType(8).as_pointer()
        i32 = llvm_ir.IntType(32)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH)
        # read, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


def _parallel(rows: int) -> bool:
    return rows >= PARALLEL_MIN_ROWS and numba.get_num_threads() > 1
