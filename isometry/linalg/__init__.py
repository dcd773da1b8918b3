"""Linear algebra of Jacobians: dense Jacobians, the matrix-free operator, Golub–Kahan.

| module | owns |
| --- | --- |
| `_jacobian` | dense J (`jacfwd`/`jacrev` by shape, chunked by the memory budget), the matrix-free `JacobianOperator` (J v, Jᵀ u), the memory budget and its checks |
| `_golub_kahan` | the Golub–Kahan recurrence, b vectors a step (b = 1: one), restarts on breakdown, the certified run; every step count in vectors |
| `_ritz` | Ritz values of the (block) bidiagonal B, their residual and refined error bounds, the stopping rule |
| `_memory` | the memory budget: one default, one check (`check_fits`), device memory |
| `_lapack` | `lapack_safe`: LAPACK one matrix at a time on the CPU (batched calls can deadlock) |
"""

from isometry.linalg._jacobian import (JacobianOperator, JacobianTooLargeError, dense_jacobian,
                                       jacobian_operator)
from isometry.linalg._lapack import lapack_safe
from isometry.linalg._memory import DEFAULT_MEMORY_BUDGET, check_fits, memory_budget_of

__all__ = ["JacobianOperator", "JacobianTooLargeError", "dense_jacobian", "jacobian_operator",
           "lapack_safe", "DEFAULT_MEMORY_BUDGET", "check_fits", "memory_budget_of"]
