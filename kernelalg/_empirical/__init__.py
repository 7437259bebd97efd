"""Empirical NNGP and NTK of finite networks (private; re-exported by `kernelalg`)."""
