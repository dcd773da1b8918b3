"""The device options of `spectrum` and `train`: --simulate-devices, --mesh, --coordinator.

`add_mesh_arguments` adds them; `check_device_args` checks what the parsed values alone can
tell (before jax is imported); `mesh_from_args` starts the processes and builds the mesh.
"""

from __future__ import annotations

from isometry.cli import UsageError
from isometry.cli._names import MAX_SIMULATED_DEVICES

__all__ = ["add_mesh_arguments", "check_device_args", "mesh_from_args"]

def _mesh_syntax_ok(text: str) -> bool:
    """Whether `isometry.parse_mesh` can read `text` ("data=D" or "data=D,model=M")."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return all(p.partition("=")[0] in ("data", "model") and p.partition("=")[2].isdigit()
               for p in parts)


def add_mesh_arguments(p, mesh_help: str) -> None:
    """--simulate-devices N, --mesh data=D[,model=M] and the --coordinator of several processes
    (read back by `mesh_from_args`)."""
    p.add_argument("--simulate-devices", type=int, default=None, metavar="N",
                   help=f"on a CPU: offer N simulated devices (jax_num_cpu_devices) to try --mesh "
                        f"(1 to {MAX_SIMULATED_DEVICES}: the CPU backend's start grows faster "
                        f"than linearly in N)")
    p.add_argument("--mesh", default=None, metavar="data=D[,model=M]", help=mesh_help)
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT|auto",
                   help="one of several processes (jax.distributed.initialize): the address of "
                        "process 0, with --num-processes and --process-id; 'auto' detects them "
                        "(Cloud TPU, SLURM, Open MPI). Start the same command in every process; "
                        "the mesh spans all their devices; process 0 prints and writes")
    p.add_argument("--num-processes", type=int, default=None, metavar="N")
    p.add_argument("--process-id", type=int, default=None, metavar="I")


def check_device_args(args) -> None:
    """The device options' values, before jax is imported.

    Raises:
      UsageError: naming the option and what it takes.
    """
    n = getattr(args, "simulate_devices", None)
    if n is not None and not 1 <= n <= MAX_SIMULATED_DEVICES:
        raise UsageError(f"--simulate-devices must be between 1 and {MAX_SIMULATED_DEVICES} "
                         f"(more take minutes for the CPU backend to start), got {n}")
    text = getattr(args, "mesh", None)
    if text is not None and not _mesh_syntax_ok(text):
        raise UsageError(f"--mesh {text!r}: use 'data=D' or 'data=D,model=M'")
    address = getattr(args, "coordinator", None)
    n, rank = getattr(args, "num_processes", None), getattr(args, "process_id", None)
    if address is None:
        if n is not None or rank is not None:
            raise UsageError("--num-processes and --process-id need --coordinator HOST:PORT")
    elif address != "auto" and (n is None or rank is None or not 0 <= rank < n):
        raise UsageError(f"--coordinator {address} needs --num-processes N and --process-id I "
                         f"with 0 <= I < N; got N={n}, I={rank}")


def _start_processes(args) -> None:
    """jax.distributed.initialize for --coordinator (before anything starts jax's backend)."""
    import jax

    address = getattr(args, "coordinator", None)
    if address is None:
        return
    try:
        if address == "auto":
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator_address=address, num_processes=args.num_processes,
                                       process_id=args.process_id)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--coordinator {address}: jax.distributed.initialize failed: "
                         f"{str(err).splitlines()[0]}") from None


def mesh_from_args(args, batch_size: int | None = None):
    """The device mesh of --mesh (after --simulate-devices), or None for one device; with a
    training `batch_size`, checks that it splits over the mesh's "data" axis."""
    import jax

    import isometry as iso

    check_device_args(args)
    n = getattr(args, "simulate_devices", None)
    if n is not None:
        try:
            iso.simulate_devices(n)
        except RuntimeError as err:  # the backend already started
            raise UsageError(f"--simulate-devices: {err}") from None
    _start_processes(args)
    text = getattr(args, "mesh", None)
    if not text:
        return None
    try:
        mesh = iso.parse_mesh(text)
    except ValueError as err:
        raise UsageError(f"--mesh {text}: {err} ({jax.device_count()} devices; on a CPU add "
                         f"--simulate-devices N)") from None
    if batch_size is not None and batch_size % mesh.shape["data"]:
        raise UsageError(f"--batch-size {batch_size} does not split over the "
                         f"{mesh.shape['data']} devices of --mesh {text}: use a multiple")
    return mesh
