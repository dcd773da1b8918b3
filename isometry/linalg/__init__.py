"""Linear algebra of Jacobians: dense Jacobians, the matrix-free operator, Golub–Kahan.

| module | owns |
| --- | --- |
| `_jacobian` | dense J (`jacfwd`/`jacrev` by shape, chunked by the memory budget), the matrix-free `JacobianOperator` (J v, Jᵀ u), the memory budget and its checks |
| `_golub_kahan` | the Golub–Kahan recurrence, certified top singular values, restarts, error bounds |
| `_lapack` | `lapack_safe`: LAPACK one matrix at a time on the CPU (batched calls can deadlock) |
"""

from isometry.linalg._jacobian import (JacobianOperator, JacobianTooLargeError, dense_jacobian,
                                       jacobian_operator)
from isometry.linalg._lapack import lapack_safe

__all__ = ["JacobianOperator", "JacobianTooLargeError", "dense_jacobian", "jacobian_operator",
           "lapack_safe"]
