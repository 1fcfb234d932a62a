"""llmpi: loss-landscape sweeps (Li et al., *Visualizing the Loss Landscape of Neural Nets*, NeurIPS 2018) over MPI.

    mpirun -n 8 python -m llmpi.sweep jobs/vgg56.yaml

Layers, imported one way only:

* numerics -- ``models``, ``data``, ``checkpoint``, ``directions``, ``evaluate``, ``grid``: torch and numpy, never MPI;
* distribution -- ``protocol``: the coordinator/worker message protocol, mpi4py and numpy, never torch;
* storage -- ``store``: the only module that opens the HDF5 surface file for writing;
* wiring -- ``sweep``, ``train``, ``plot``, ``status``: the command lines.
"""

__version__ = "0.1.0"
