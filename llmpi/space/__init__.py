"""The plane (or line) in weight space: θ* and the other checkpoints, the directions, and θ formed at a point."""
