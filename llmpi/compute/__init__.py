"""The values at a point of weight space -- loss, accuracy, Hessian -- over the selected data. Torch, never MPI."""
