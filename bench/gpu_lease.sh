#!/usr/bin/env bash
# Everything a lent GPU machine should measure, in one call that ends within 10 minutes (a lease is 15 minutes of
# device time, the machine's start included): the GPU tests, then `python -m bench --profile gpu-short`.
#
#   here, once:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                    --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 -d .whl mpich==5.0.2 mpi4py==4.1.2
#   the lease:   the device tool's run with command "bash bench/gpu_lease.sh", carry [".whl"], timeout_s 600
#
# The GPU machine has Python 3.12 with a CUDA build of torch, h5py, pyyaml and mpi4py, but no MPI library: .whl
# carries PyPI's MPICH (and the mpi4py built for it). Every figure lands in $OUT (bench.log, gpu-short.json,
# tests.log); bench/README.md records them with the device and the date. On a machine without CUDA the script
# says so and stops: nothing here is meant for a CPU.
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
# A venv over the machine's own packages (its CUDA torch stays), with the carried MPICH and mpi4py in it: MPICH's
# mpirun and libmpi land in the venv's bin/ and lib/, where mpi4py looks, as in a venv of this repo.
py=python3
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m venv --system-site-packages /tmp/lease-venv \
        && /tmp/lease-venv/bin/pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl \
        || { echo "gpu_lease: the carried wheels did not install" >&2; exit 1; }
    py=/tmp/lease-venv/bin/python
    export PATH="/tmp/lease-venv/bin:$PATH"
fi
export PYTHONPATH="$PWD"
nvidia-smi -L 2>&1 | tee "$out/device.txt"
"$py" -c "import torch, sys; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0)) \
    if torch.cuda.is_available() else sys.exit('gpu_lease: torch sees no GPU here')" | tee -a "$out/device.txt" || exit 2

status=0
# The GPU tests (about 1 minute): values against the CPU, precisions, the compiled path, fast kernels, lean weights
# and host placement on the device, two ranks on one GPU, llmpi.surface and llmpi.spectrum on a network in GPU memory.
timeout 180 "$py" -m pytest -q -ra -p no:cacheprovider -o addopts="" \
    tests/test_gpu_big.py tests/test_evaluate.py tests/test_cluster.py tests/test_api.py tests/test_api_spectrum.py -m gpu 2>&1 | tee "$out/tests.log" || status=1
# Every GPU figure of the speed section in one run (< 8 min: two compilations, 121 points of ResNet-56 over 50,000
# images in bf16 and tf32, the limits, deviations and kernels).
timeout 420 "$py" -m bench --profile gpu-short --json "$out/gpu-short.json" 2>&1 | tee "$out/bench.log" || status=1
exit "$status"
