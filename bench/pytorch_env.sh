# Sourced by the comparison scripts: how PyTorch is run beside the engine.
#   "as installed": Debian's /usr/bin/python3 with this environment untouched.
#   "tuned": the best PyTorch does here without code changes: tcmalloc preloaded (glibc
#   malloc returns PyTorch's activations to the OS and faults them back every step), the
#   OpenBLAS variables of the environment unset, and one OpenMP thread per core (PyTorch
#   counts the cores of these virtual machines as one and would use a single thread).
# After sourcing: $py, and tuned_env (an array; empty when tcmalloc is not installed).
py=${PYTHON:-/usr/bin/python3}
tcmalloc=$(ls /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4 2>/dev/null | head -n 1 || true)
tuned_env=()
if [ -n "$tcmalloc" ]; then
  tuned_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_NUM_THREADS OMP_NUM_THREADS="$(nproc)" LD_PRELOAD="$tcmalloc")
fi
