"""Performance benchmarks of kd_tf (issue 6): `python -m benchmarks.run [--quick] [--only NAME ...]`."""
