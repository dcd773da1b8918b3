"""Many devices and processes: meshes, batch sharding, one SPMD spectrum program over a mesh.

| module | owns |
| --- | --- |
| `_sharding` | `device_mesh`, `batch_mesh`, `parse_mesh`, `simulate_devices`, `sharded_spectrum_fn`, `to_host`, `collective_counts` |
"""

from isometry.parallel._sharding import (batch_mesh, collective_counts, device_mesh, parse_mesh,
                                         sharded_spectrum_fn, simulate_devices, to_host)

__all__ = ["batch_mesh", "collective_counts", "device_mesh", "parse_mesh", "sharded_spectrum_fn",
           "simulate_devices", "to_host"]
